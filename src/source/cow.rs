//! The dm-snapshot persistent exception store.
