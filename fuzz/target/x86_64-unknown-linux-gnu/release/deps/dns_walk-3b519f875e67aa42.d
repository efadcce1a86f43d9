/work/main/fuzz/target/x86_64-unknown-linux-gnu/release/deps/dns_walk-3b519f875e67aa42.d: fuzz_targets/dns_walk.rs

/work/main/fuzz/target/x86_64-unknown-linux-gnu/release/deps/dns_walk-3b519f875e67aa42: fuzz_targets/dns_walk.rs

fuzz_targets/dns_walk.rs:
