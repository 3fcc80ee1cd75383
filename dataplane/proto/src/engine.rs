//! Forwarding decisions. (filled in next)
