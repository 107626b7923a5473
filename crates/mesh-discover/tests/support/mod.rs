//! Test doubles.

pub mod consul;
