//! Per-VNI forwarding tables. (filled in next)
