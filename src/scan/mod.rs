//! Content and sender scanners the policy engine exposes to scripts.

pub mod dlp;
