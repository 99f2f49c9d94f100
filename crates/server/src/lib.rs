//! Update server.
