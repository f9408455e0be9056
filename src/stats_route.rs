//! Statistics routes (placeholder).
