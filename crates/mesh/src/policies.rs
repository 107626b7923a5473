//! Per-method policies: a service's calls matched by path (and HTTP
//! method) to their own deadline and retry or hedging policy, from a gRPC
//! service config (`methodConfig`) or `[[services.<name>.methods]]`.
//!
//! One retry layer serves every method of a service, so a method's policy
//! travels with its request as a [`CallPolicy`] extension, and its
//! timeout shortens the call's deadline.
//!
//! Each rule is named after what it matches (`/api/search`,
//! `GET /api/search`, `/pkg.Users/Get`, `*` for every path), and the
//! route's retry layer asks [`MethodPolicies`] for the name of the rule a
//! call matched only when the call's span records it
//! (`mesh.method_policy`): the request carries no name.

use std::time::Duration;

use http::Method;
use mesh_retry::{CallPolicy, MethodPolicyNames};

/// What applies to the calls a rule matches.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Applied {
    /// The whole call's time limit (gRPC's `timeout`): the deadline is the
    /// sooner of this and the caller's own.
    pub(crate) timeout: Option<Duration>,
    /// The retry or hedging policy, over the service's `[retry]`.
    pub(crate) call: Option<CallPolicy>,
}

/// Which paths a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Every path (gRPC's empty name: the service config's default).
    Any,
    /// This path and those below it, segment by segment: `/api/search`
    /// matches `/api/search` and `/api/search/x`, not `/api/searchable`.
    Prefix(String),
    /// This path only (a gRPC method, `/pkg.Service/Method`).
    Exact(String),
}

/// One rule: which calls, and what applies to them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rule {
    /// The HTTP method it is limited to, if any.
    pub(crate) method: Option<Method>,
    pub(crate) path: PathMatch,
    pub(crate) applied: Applied,
}

/// A service's rules. The most specific one matching a call applies: an
/// exact path over a prefix, a longer prefix over a shorter, a rule naming
/// the HTTP method over one that does not.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct MethodPolicies {
    rules: Vec<Rule>,
    /// Each rule's name, for spans, in the order of `rules`: written once
    /// here so a span borrows it rather than formatting it per call.
    names: Vec<String>,
}

// === impl PathMatch ===

impl PathMatch {
    /// How specifically it matches `path`, if it does: higher wins.
    fn matches(&self, path: &str) -> Option<usize> {
        match self {
            PathMatch::Any => Some(0),
            PathMatch::Prefix(prefix) => {
                let rest = path.strip_prefix(prefix.as_str())?;
                let whole_segment =
                    rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/');
                whole_segment.then_some(1 + prefix.len())
            }
            PathMatch::Exact(exact) => (exact == path).then_some(usize::MAX),
        }
    }
}

// === impl Rule ===

impl Rule {
    /// What it matches, as a span names it: its path (prefix or exact),
    /// `*` for every path, after its HTTP method when it names one.
    fn name(&self) -> String {
        let path = match &self.path {
            PathMatch::Any => "*",
            PathMatch::Prefix(path) | PathMatch::Exact(path) => path,
        };
        match &self.method {
            Some(method) => format!("{method} {path}"),
            None => path.to_owned(),
        }
    }
}

// === impl MethodPolicies ===

impl MethodPolicies {
    /// The policies of `rules`; `None` when there is none, so calls to the
    /// service look nothing up.
    pub(crate) fn new(rules: Vec<Rule>) -> Option<MethodPolicies> {
        let names = rules.iter().map(Rule::name).collect();
        (!rules.is_empty()).then_some(MethodPolicies { rules, names })
    }

    /// What applies to a `method` call of `path`, if any rule matches.
    pub(crate) fn find(&self, method: &Method, path: &str) -> Option<&Applied> {
        self.matching(method, path).map(|i| &self.rules[i].applied)
    }

    /// The index of the rule that applies to a `method` call of `path`:
    /// the most specific of those that match.
    fn matching(&self, method: &Method, path: &str) -> Option<usize> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.method.as_ref().is_none_or(|m| m == method))
            .filter_map(|(i, r)| {
                let score = r.path.matches(path)?;
                Some(((score, r.method.is_some()), i))
            })
            .max_by_key(|(score, _)| *score)
            .map(|(_, i)| i)
    }
}

/// The route's retry layer names the rule a call matched in the call's
/// span, asking only when that span is enabled.
impl MethodPolicyNames for MethodPolicies {
    fn policy_for(&self, method: &Method, path: &str) -> Option<&str> {
        self.matching(method, path).map(|i| self.names[i].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: Option<Method>, path: PathMatch, secs: u64) -> Rule {
        Rule {
            method,
            path,
            applied: Applied {
                timeout: Some(Duration::from_secs(secs)),
                call: None,
            },
        }
    }

    fn timeout(p: &MethodPolicies, method: Method, path: &str) -> Option<u64> {
        p.find(&method, path)?.timeout.map(|t| t.as_secs())
    }

    #[test]
    fn the_most_specific_rule_applies() {
        let p = MethodPolicies::new(vec![
            rule(None, PathMatch::Any, 1),
            rule(None, PathMatch::Prefix("/pkg.Users/".into()), 2),
            rule(None, PathMatch::Exact("/pkg.Users/Get".into()), 3),
            rule(None, PathMatch::Prefix("/api".into()), 4),
            rule(Some(Method::GET), PathMatch::Prefix("/api".into()), 5),
            rule(None, PathMatch::Prefix("/api/search".into()), 6),
        ])
        .expect("rules");
        assert_eq!(timeout(&p, Method::POST, "/pkg.Users/Get"), Some(3));
        assert_eq!(timeout(&p, Method::POST, "/pkg.Users/List"), Some(2));
        assert_eq!(timeout(&p, Method::POST, "/pkg.Orders/Get"), Some(1));
        assert_eq!(timeout(&p, Method::POST, "/api/users"), Some(4));
        assert_eq!(timeout(&p, Method::GET, "/api/users"), Some(5));
        assert_eq!(timeout(&p, Method::GET, "/api/search/x"), Some(6));
        assert_eq!(
            timeout(&p, Method::GET, "/apis"),
            Some(1),
            "not a segment of /api"
        );
        assert_eq!(MethodPolicies::new(Vec::new()), None);
    }

    #[test]
    fn a_call_names_the_rule_that_applies_to_it() {
        let p = MethodPolicies::new(vec![
            rule(None, PathMatch::Any, 1),
            rule(None, PathMatch::Exact("/pkg.Users/Get".into()), 2),
            rule(None, PathMatch::Prefix("/api".into()), 3),
            rule(Some(Method::GET), PathMatch::Prefix("/api".into()), 4),
        ])
        .expect("rules");
        let name = |method, path| p.policy_for(&method, path);
        assert_eq!(name(Method::POST, "/pkg.Users/Get"), Some("/pkg.Users/Get"));
        assert_eq!(name(Method::POST, "/api/users"), Some("/api"));
        assert_eq!(name(Method::GET, "/api/users"), Some("GET /api"));
        assert_eq!(name(Method::GET, "/other"), Some("*"));
        let without_default =
            MethodPolicies::new(vec![rule(None, PathMatch::Prefix("/api".into()), 1)])
                .expect("rules");
        assert_eq!(without_default.policy_for(&Method::GET, "/other"), None);
    }
}
