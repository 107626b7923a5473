#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod catalog;
mod future;
mod layer;
mod service;
mod static_list;

pub use catalog::Catalog;
pub use future::ResponseFuture;
pub use layer::DiscoverLayer;
pub use service::Discover;
pub use static_list::{StaticRegistry, StaticRegistryBuilder};
