//! Benchmarks live in `benches/` (criterion) and `load/` (side-by-side proxies).
