//! Bencode properties: encode/decode round trip, fuzz body over random and mutated input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use switchboard_proto::bencode::{self, Limits, Value};

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            prop::collection::vec((prop::collection::vec(any::<u8>(), 0..8), inner), 0..8)
                .prop_map(Value::Dict),
        ]
    })
}

/// Values JSON can carry: UTF-8 strings, unique keys.
fn arb_json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            prop::collection::btree_map(".{0,6}", inner, 0..8).prop_map(|m| Value::Dict(
                m.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(v in arb_value(), tail in prop::collection::vec(any::<u8>(), 0..4)) {
        let mut enc = v.to_bencode();
        let len = enc.len();
        enc.extend_from_slice(&tail);
        let (back, used) = bencode::decode(&enc).unwrap();
        prop_assert_eq!(used, len);
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(bencode::value_len(&enc, Limits::NG), Ok(Some(len)));
        for cut in 0..len {
            prop_assert!(bencode::decode(&enc[..cut]).unwrap_err().is_truncated());
        }
        bencode::fuzz_decode(&enc);
    }

    #[test]
    fn json_round_trip(v in arb_json_value()) {
        let mut j = Vec::new();
        v.encode_json(&mut j);
        prop_assert_eq!(bencode::parse_json(&j, Limits::NG).unwrap(), v);
    }

    #[test]
    fn fuzz_random(data in prop::collection::vec(any::<u8>(), 0..256)) {
        bencode::fuzz_decode(&data);
    }

    #[test]
    fn fuzz_mutated(v in arb_value(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut enc = v.to_bencode();
        let i = pos % enc.len();
        enc[i] = byte;
        bencode::fuzz_decode(&enc);
    }
}
