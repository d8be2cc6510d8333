//! Thin-pool metadata: a native reader of dm-thin's on-disk btrees.

/// Errors reading thin-pool metadata.
#[derive(Debug, thiserror::Error)]
pub enum ThinError {
    #[error("{0}")]
    Metadata(String),
}
