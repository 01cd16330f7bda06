//! Why a registry could not be built.

use std::fmt;

use super::source::Key;
use crate::BoxError;
use crate::settings::{Bounded, SettingsError};

/// What a name passed to the [`Builder`](super::Builder) names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameKind {
    /// A policy ([`Builder::policy`](super::Builder::policy)).
    Policy,
    /// A switch ([`Builder::switch`](super::Builder::switch)).
    Switch,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Policy => "policy",
            NameKind::Switch => "switch",
        })
    }
}

/// Why [`Builder::build`](super::Builder::build) failed. Tell the cases apart by
/// matching; [`source`](std::error::Error::source) is the underlying error, if any.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// A code default was given under a name that is not valid (1 to 128 of
    /// `A-Z a-z 0-9 _ . -`).
    InvalidName {
        /// What the name names.
        kind: NameKind,
        /// The name as given.
        name: String,
    },
    /// A code default does not pass validation.
    InvalidDefault {
        /// The key it was given for (`policies/<name>`, `switches/<name>`, `global`).
        key: Key,
        /// Why it is invalid.
        error: SettingsError,
    },
    /// A source failed to start.
    Source {
        /// Its position among the builder's sources, from 0.
        index: usize,
        /// What it returned.
        error: BoxError,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::InvalidName { kind, name } => write!(
                f,
                "invalid {kind} name {} (expected 1 to 128 of A-Z a-z 0-9 _ . -)",
                Bounded::key(name)
            ),
            BuildError::InvalidDefault { key, error } => {
                write!(f, "invalid code default of {key}: {error}")
            }
            BuildError::Source { index, error } => {
                write!(f, "source {index} failed to start: {error}")
            }
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::InvalidName { .. } => None,
            BuildError::InvalidDefault { error, .. } => Some(error),
            BuildError::Source { error, .. } => Some(&**error),
        }
    }
}
