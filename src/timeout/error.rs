//! The timeout layer's error.

unit_error!(
    /// The call did not finish within the policy's timeout.
    Elapsed,
    "request timed out"
);
