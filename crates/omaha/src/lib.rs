//! Omaha v3 protocol.
