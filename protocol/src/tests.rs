//! Encoding across versions: what 1.0.0 (no features) and 2.0.0 (priority
//! supported, maybe enabled) produce and accept.
#![allow(clippy::unwrap_used)]
use super::*;

fn v1() -> FeatureSet {
    FeatureSet::new()
}
fn v2() -> FeatureSet {
    [FEATURE_PRIORITY.to_string()].into()
}
fn unit(id: &str, priority: Option<u8>) -> WorkUnit {
    WorkUnit {
        id: id.into(),
        state: UnitState::Open,
        fields: [("caller".to_string(), "alice".to_string())].into(),
        priority,
        ops: vec![format!("{id}-open")],
    }
}
fn update(op: Operation) -> LinkMsg {
    LinkMsg::Update { generation: 1, seq: 7, request: WorkRequest { id: "r7".into(), op } }
}

#[test]
fn v2_with_features_off_is_read_by_v1() {
    // 2.0.0 with features disabled: negotiated set is empty whatever the peer supports.
    let neg = negotiated(&v1(), &v1());
    let snap = LinkMsg::StepUp { generation: 1, seq: 3, units: vec![unit("a", None)], chain: 0 };
    let line = encode_link(&snap, &neg).unwrap();
    assert!(!String::from_utf8_lossy(&line).contains("priority"));
    assert_eq!(decode_link(&line, &v1()).unwrap(), snap);
    let upd = update(Operation::Close { unit: "a".into() });
    assert_eq!(decode_link(&encode_link(&upd, &neg).unwrap(), &v1()).unwrap(), upd);
}

#[test]
fn v1_output_is_read_by_v2() {
    let upd = update(Operation::Open { unit: "a".into(), fields: Default::default() });
    let line = encode_link(&upd, &v1()).unwrap();
    assert_eq!(decode_link(&line, &v2()).unwrap(), upd);
    let snap = LinkMsg::StepUp { generation: 2, seq: 9, units: vec![unit("a", None), unit("b", None)], chain: 0 };
    assert_eq!(decode_link(&encode_link(&snap, &v1()).unwrap(), &v2()).unwrap(), snap);
}

#[test]
fn feature_content_is_not_encoded_unless_negotiated() {
    let upd = update(Operation::SetPriority { unit: "a".into(), priority: 3 });
    // Enabled locally but the peer (1.0.0) does not support it.
    let neg = negotiated(&v2(), &v1());
    assert!(matches!(encode_link(&upd, &neg), Err(ProtocolError::NotNegotiated(f)) if f == FEATURE_PRIORITY));
    let snap = LinkMsg::StepUp { generation: 1, seq: 1, units: vec![unit("a", Some(2))], chain: 0 };
    assert!(matches!(encode_link(&snap, &neg), Err(ProtocolError::NotNegotiated(_))));
    // Both 2.0.0 and enabled: it goes through and 2.0.0 reads it.
    let neg = negotiated(&v2(), &v2());
    let line = encode_link(&upd, &neg).unwrap();
    assert_eq!(decode_link(&line, &v2()).unwrap(), upd);
    let line = encode_link(&snap, &neg).unwrap();
    assert_eq!(decode_link(&line, &v2()).unwrap(), snap);
}

#[test]
fn v1_rejects_feature_content_instead_of_dropping_it() {
    let line = to_line(&update(Operation::SetPriority { unit: "a".into(), priority: 1 })).unwrap();
    assert!(matches!(decode_link(&line, &v1()), Err(ProtocolError::Unsupported(f)) if f == FEATURE_PRIORITY));
    let line = to_line(&LinkMsg::StepUp { generation: 1, seq: 1, units: vec![unit("a", Some(1))], chain: 0 }).unwrap();
    assert!(matches!(decode_link(&line, &v1()), Err(ProtocolError::Unsupported(_))));
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    let line = br#"{"type":"registered","generation":1,"seq":4,"added_in_3_0":true}"#;
    assert_eq!(decode_link(line, &v1()).unwrap(), LinkMsg::Registered { generation: 1, seq: 4 });
}

#[test]
fn malformed_lines_are_errors() {
    assert!(matches!(decode_link(b"{not json", &v1()), Err(ProtocolError::Malformed(_))));
    assert!(matches!(decode_link(br#"{"type":"teleport"}"#, &v1()), Err(ProtocolError::Malformed(_))));
    assert!(from_line::<ControlRequest>(br#"{"type":"set-role","role":"boss","epoch":1}"#).is_err());
}

#[test]
fn lines_end_in_newline_and_round_trip() {
    let req = ControlRequest::SetRole { role: Role::Standby, epoch: 4 };
    let line = to_line(&req).unwrap();
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(String::from_utf8(line.clone()).unwrap(), "{\"type\":\"set-role\",\"role\":\"standby\",\"epoch\":4}\n");
    assert_eq!(from_line::<ControlRequest>(&line).unwrap(), req);
}

#[test]
fn work_reply_ids() {
    let r = WorkReply::NotActive { id: "x".into(), role: Role::Standby, active: Some("p121".into()) };
    assert_eq!(r.id(), "x");
    let line = to_line(&r).unwrap();
    assert_eq!(from_line::<WorkReply>(&line).unwrap(), r);
}

#[test]
fn the_chain_tells_the_same_history_from_another() {
    let h = |ids: &[(u64, &str)]| ids.iter().fold(0, |c, (seq, id)| chain(c, *seq, id));
    assert_eq!(h(&[(1, "a"), (2, "b")]), h(&[(1, "a"), (2, "b")]));
    assert_ne!(h(&[(1, "a"), (2, "b")]), h(&[(1, "b"), (2, "a")]));
    assert_ne!(h(&[(1, "a"), (2, "b")]), h(&[(1, "a"), (2, "c")]));
    // A confirmation carries no units, so no feature: both versions read it.
    let msg = LinkMsg::Continue { generation: 2, seq: 9, chain: 77 };
    assert_eq!(decode_link(&encode_link(&msg, &v1()).unwrap(), &v1()).unwrap(), msg);
}
