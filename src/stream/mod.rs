//! Change streams: the bytes that travel from sender to receiver, and snapback files.
//!
//! Two formats, told apart by their first line:
//! - format 3 (`lvmsync PROTO[3]\n`), byte-exact with Ruby lvmsync 3.x ([`v3`]);
//! - format 4 (`lvmsync PROTO[4]\n`), the native format with checksums and an end record ([`v4`]).
