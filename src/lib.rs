//! Beacon
