//! C API (placeholder)
