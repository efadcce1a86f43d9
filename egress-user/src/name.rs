//! Names in a policy: an exact name or a `*.suffix` wildcard, validated so that everything the
//! policy accepts is something the kernel can match.

use std::{fmt, str::FromStr};

use egress_common::MAX_LABELS;
use serde::Serialize;
use thiserror::Error;

/// Why a name is not a valid [`NamePattern`].
#[derive(Debug, Error)]
pub enum NameError {
    #[error("invalid name {raw:?}: empty")]
    Empty { raw: String },
    #[error("invalid name {raw:?}: longer than 253 characters")]
    TooLong { raw: String },
    #[error("invalid name {raw:?}: empty label")]
    EmptyLabel { raw: String },
    #[error("invalid name {raw:?}: label {label:?} is longer than 63 characters")]
    LabelTooLong { raw: String, label: String },
    #[error(
        "invalid name {raw:?}: '*' is only allowed as the whole leftmost label, as in \"*.example.com\""
    )]
    MisplacedWildcard { raw: String },
    #[error(
        "invalid name {raw:?}: label {label:?} may hold only letters, digits, '-' and '_' (write internationalized names in their xn-- form)"
    )]
    InvalidCharacter { raw: String, label: String },
    #[error("invalid name {raw:?}: label {label:?} starts or ends with '-'")]
    Hyphen { raw: String, label: String },
    #[error(
        "invalid name {raw:?}: {labels} labels; the kernel matches DNS names of at most {MAX_LABELS} labels{}, so it would never be learned",
        if *wildcard { " (a wildcard's suffix at most one less)" } else { "" }
    )]
    TooManyLabels {
        raw: String,
        labels: usize,
        wildcard: bool,
    },
}

/// An allowed name: exact, or `*.suffix` (any name strictly below `suffix`, at any depth).
/// Stored lowercase, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamePattern {
    Exact(String),
    Wildcard(String),
}

impl NamePattern {
    /// Whether `name` (any case, trailing dot or not) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            NamePattern::Exact(n) => name == *n,
            NamePattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

impl Serialize for NamePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for NamePattern {
    type Err = NameError;

    fn from_str(raw: &str) -> Result<Self, NameError> {
        let lower = raw.trim().to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        let (wild, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        if rest.is_empty() {
            return Err(NameError::Empty {
                raw: raw.to_owned(),
            });
        }
        if rest.len() > 253 {
            return Err(NameError::TooLong {
                raw: raw.to_owned(),
            });
        }
        // The kernel hashes at most MAX_LABELS labels of a question name; a wildcard matches
        // names with at least one more label than its suffix.
        let labels = rest.split('.').count() + usize::from(wild);
        if labels > MAX_LABELS {
            return Err(NameError::TooManyLabels {
                raw: raw.to_owned(),
                labels: labels - usize::from(wild),
                wildcard: wild,
            });
        }
        for label in rest.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel {
                    raw: raw.to_owned(),
                });
            }
            if label.len() > 63 {
                return Err(NameError::LabelTooLong {
                    raw: raw.to_owned(),
                    label: label.to_owned(),
                });
            }
            if label == "*" || label.contains('*') {
                return Err(NameError::MisplacedWildcard {
                    raw: raw.to_owned(),
                });
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(NameError::InvalidCharacter {
                    raw: raw.to_owned(),
                    label: label.to_owned(),
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::Hyphen {
                    raw: raw.to_owned(),
                    label: label.to_owned(),
                });
            }
        }
        Ok(if wild {
            Self::Wildcard(rest.to_owned())
        } else {
            Self::Exact(rest.to_owned())
        })
    }
}
