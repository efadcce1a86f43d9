//! The policy parser: any text either parses into a valid policy or is a located error; it
//! never panics. A policy that parses, printed again (`egress check`), parses back to itself.
#![no_main]

use std::path::Path;

use egress_user::policy::{PolicyError, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text, Path::new("fuzz.yaml")) {
        Ok(p) => {
            let printed = serde_saphyr::to_string(&p).expect("a parsed policy prints");
            let again = parse(&printed, Path::new("printed.yaml"))
                .unwrap_or_else(|e| panic!("printed policy does not parse: {e}\n{printed}"));
            assert_eq!(p, again, "round trip changed the policy:\n{printed}");
        }
        Err(PolicyError::Invalid { path, .. }) => assert_eq!(path, Path::new("fuzz.yaml")),
        Err(PolicyError::Read { .. }) => unreachable!("parse does not read files"),
    }
});
