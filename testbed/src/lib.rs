//! Testbed library.
