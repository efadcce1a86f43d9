/work/main/fuzz/target/x86_64-unknown-linux-gnu/release/deps/egress_common-c0ae12de07567007.d: /work/main/egress-common/src/lib.rs /work/main/egress-common/src/counters.rs /work/main/egress-common/src/dns.rs /work/main/egress-common/src/hash.rs /work/main/egress-common/src/maps.rs /work/main/egress-common/src/packet.rs /work/main/egress-common/src/testing.rs

/work/main/fuzz/target/x86_64-unknown-linux-gnu/release/deps/libegress_common-c0ae12de07567007.rlib: /work/main/egress-common/src/lib.rs /work/main/egress-common/src/counters.rs /work/main/egress-common/src/dns.rs /work/main/egress-common/src/hash.rs /work/main/egress-common/src/maps.rs /work/main/egress-common/src/packet.rs /work/main/egress-common/src/testing.rs

/work/main/fuzz/target/x86_64-unknown-linux-gnu/release/deps/libegress_common-c0ae12de07567007.rmeta: /work/main/egress-common/src/lib.rs /work/main/egress-common/src/counters.rs /work/main/egress-common/src/dns.rs /work/main/egress-common/src/hash.rs /work/main/egress-common/src/maps.rs /work/main/egress-common/src/packet.rs /work/main/egress-common/src/testing.rs

/work/main/egress-common/src/lib.rs:
/work/main/egress-common/src/counters.rs:
/work/main/egress-common/src/dns.rs:
/work/main/egress-common/src/hash.rs:
/work/main/egress-common/src/maps.rs:
/work/main/egress-common/src/packet.rs:
/work/main/egress-common/src/testing.rs:
