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
/// Set a hand-edited frame's length header to its body.
fn reframe(frame: &mut [u8]) {
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
}
fn update(op: Operation) -> LinkMsg {
    LinkMsg::Update { generation: 1, seq: 7, request: WorkRequest { id: "r7".into(), op } }
}

#[test]
fn v2_with_features_off_is_read_by_v1() {
    // 2.0.0 with features disabled: negotiated set is empty whatever the peer supports.
    let neg = negotiated(&v1(), &v1());
    let snap = LinkMsg::StepUp { generation: 1, seq: 3, units: vec![unit("a", None)], chain: 0 };
    let frame = encode_link(&snap, &neg).unwrap();
    let read = decode_link(&frame, &v1()).unwrap();
    assert_eq!(read, snap);
    assert_eq!(link_feature(&read), None);
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
    // Encoded without the gate (as a build that ignored it would).
    let frame = to_frame(&update(Operation::SetPriority { unit: "a".into(), priority: 1 }));
    assert!(matches!(decode_link(&frame, &v1()), Err(ProtocolError::Unsupported(f)) if f == FEATURE_PRIORITY));
    let frame = to_frame(&LinkMsg::StepUp { generation: 1, seq: 1, units: vec![unit("a", Some(1))], chain: 0 });
    assert!(matches!(decode_link(&frame, &v1()), Err(ProtocolError::Unsupported(_))));
}

#[test]
fn fields_added_at_the_end_are_ignored_for_forward_compatibility() {
    // A later version appends a field to `registered`: this one reads what it knows.
    let mut frame = to_frame(&LinkMsg::Registered { generation: 1, seq: 4 });
    frame.extend_from_slice(&[7, 7]);
    reframe(&mut frame);
    assert_eq!(decode_link(&frame, &v1()).unwrap(), LinkMsg::Registered { generation: 1, seq: 4 });
    // ...and to a step-up unit, which carries its own length: the units after it still decode.
    let snap = LinkMsg::StepUp { generation: 2, seq: 9, units: vec![unit("a", None), unit("b", None)], chain: 5 };
    let plain = to_frame(&snap);
    let first_len_at = 4 + 1 + 1 + 1 + 8 + 1;
    let first_len = usize::from(plain[first_len_at]);
    let mut grown = plain[..first_len_at].to_vec();
    grown.push(plain[first_len_at] + 1);
    grown.extend_from_slice(&plain[first_len_at + 1..first_len_at + 1 + first_len]);
    grown.push(0xaa);
    grown.extend_from_slice(&plain[first_len_at + 1 + first_len..]);
    reframe(&mut grown);
    assert_eq!(decode_link(&grown, &v1()).unwrap(), snap);
}

#[test]
fn malformed_frames_and_lines_are_errors() {
    let good = to_frame(&update(Operation::Close { unit: "a".into() }));
    // Truncated body (header says more than there is, or fields run out).
    assert!(matches!(decode_link(&good[..good.len() - 1], &v1()), Err(ProtocolError::Malformed(_))));
    let mut short = good[..good.len() - 1].to_vec();
    reframe(&mut short);
    assert!(matches!(decode_link(&short, &v1()), Err(ProtocolError::Malformed(_))));
    // Unknown kinds: of message, of operation.
    assert!(matches!(decode_link(&[1, 0, 0, 0, 99], &v1()), Err(ProtocolError::Malformed(_))));
    let mut bad_op = good.clone();
    bad_op[4 + 1 + 1 + 1 + 1 + 2] = 42;
    assert!(matches!(decode_link(&bad_op, &v1()), Err(ProtocolError::Malformed(m)) if m.contains("operation")));
    // A string that is not UTF-8.
    let mut bad_str = to_frame(&LinkMsg::Resync { reason: "ab".into() });
    bad_str[6] = 0xff;
    assert!(matches!(decode_link(&bad_str, &v1()), Err(ProtocolError::Malformed(_))));
    // A count larger than the frame could hold.
    assert!(matches!(decode_link(&[2, 0, 0, 0, 7, 0x7f], &v1()), Err(ProtocolError::Malformed(_))));
    // Control lines stay JSON.
    assert!(from_line::<ControlRequest>(b"{not json").is_err());
    assert!(from_line::<ControlRequest>(br#"{"type":"teleport"}"#).is_err());
    assert!(from_line::<ControlRequest>(br#"{"type":"set-role","role":"boss","epoch":1}"#).is_err());
}

#[test]
fn strings_decode_alike_whether_the_rest_of_the_body_is_text_or_not() {
    // All text after the first string (checked in one pass), text with
    // multi-byte characters, and a body whose rest is not UTF-8 (the priority
    // byte 0xff; strings then checked one by one).
    for op in [
        Operation::Update { unit: "u-7".into(), fields: [("state".to_string(), "connected".to_string())].into() },
        Operation::Update { unit: "zürich".into(), fields: [("名前".to_string(), "ünït".to_string())].into() },
        Operation::SetPriority { unit: "u".into(), priority: 0xff },
    ] {
        let req = WorkRequest { id: "w-é-1".into(), op };
        assert_eq!(from_frame::<WorkRequest>(&to_frame(&req)).unwrap(), req);
        let up = update(req.op.clone());
        assert_eq!(decode_link(&to_frame(&up), &v2()).unwrap(), up);
    }
    // A string cut inside a character is not UTF-8, though the body around it is.
    let req = WorkRequest { id: "é".into(), op: Operation::Close { unit: "ü".into() } };
    let mut cut = to_frame(&req);
    // Body: kind, id length 2, 0xc3 0xa9, op kind, unit length 2, 0xc3 0xbc. Make the id one byte long and
    // the op kind the id's second byte: the text is still UTF-8, the id alone is not.
    assert_eq!(cut[4..], [1, 2, 0xc3, 0xa9, 3, 2, 0xc3, 0xbc]);
    cut[5] = 1;
    assert!(matches!(from_frame::<WorkRequest>(&cut), Err(ProtocolError::Malformed(m)) if m.contains("UTF-8")));
    // Not UTF-8 at all.
    let mut bad = to_frame(&WorkRequest { id: "ab".into(), op: Operation::Close { unit: "u".into() } });
    bad[7] = 0xff;
    assert!(matches!(from_frame::<WorkRequest>(&bad), Err(ProtocolError::Malformed(m)) if m.contains("UTF-8")));
}

#[test]
fn frames_arrive_whole_however_the_bytes_are_split() {
    let msgs = [
        LinkMsg::Heartbeat,
        update(Operation::Open { unit: "u".into(), fields: [("k".to_string(), "v".to_string())].into() }),
        LinkMsg::Registered { generation: 3, seq: 300 },
    ];
    let mut stream = Vec::new();
    for m in &msgs {
        encode_link_into(m, &v1(), &mut stream).unwrap();
    }
    for chunk in [1, 3, 7, stream.len()] {
        let mut frames = Frames::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            frames.spare().extend_from_slice(piece);
            while let Some(f) = frames.next_frame().unwrap() {
                got.push(decode_link(f, &v1()).unwrap());
            }
        }
        assert_eq!(got, msgs, "read {chunk} bytes at a time");
        assert!(frames.is_empty());
    }
    // A header announcing more than the limit is refused before the body is awaited.
    let mut frames = Frames::new();
    frames.spare().extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(frames.next_frame(), Err(ProtocolError::TooLong(_))));
}

#[test]
fn the_preamble_tells_another_protocol_before_any_message() {
    assert!(check_preamble(&PREAMBLE).is_ok());
    let v1_json = *b"{\"ty";
    assert!(matches!(check_preamble(&v1_json), Err(ProtocolError::Version(v)) if v.contains("protocol 1")));
    assert!(matches!(check_preamble(b"HLP\x09"), Err(ProtocolError::Version(v)) if v == "protocol 9"));
    assert!(matches!(check_preamble(b"GET "), Err(ProtocolError::Version(_))));
}

#[test]
fn lines_end_in_newline_and_round_trip() {
    let req = ControlRequest::SetRole { role: Role::Standby, epoch: 4, holding: None };
    let line = to_line(&req).unwrap();
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(String::from_utf8(line.clone()).unwrap(), "{\"type\":\"set-role\",\"role\":\"standby\",\"epoch\":4}\n");
    assert_eq!(from_line::<ControlRequest>(&line).unwrap(), req);
}

/// A promotion's `holding` and a role change's `seq` are optional fields:
/// lines without them (as an older peer writes) still decode, and with them round-trip.
#[test]
fn holding_and_done_seq_are_optional_and_round_trip() {
    let req = ControlRequest::SetRole { role: Role::Active, epoch: 7, holding: Some(42) };
    assert_eq!(from_line::<ControlRequest>(&to_line(&req).unwrap()).unwrap(), req);
    let done = ControlReply::Done { role: Role::Standby, epoch: 6, enabled: FeatureSet::new(), seq: Some(42) };
    assert_eq!(from_line::<ControlReply>(&to_line(&done).unwrap()).unwrap(), done);
    let older = b"{\"type\":\"done\",\"role\":\"standby\",\"epoch\":6,\"enabled\":[]}\n";
    assert!(matches!(from_line::<ControlReply>(older).unwrap(), ControlReply::Done { seq: None, .. }));
    let lacking = ControlReply::Lacking { seq: 40, holding: 42 };
    assert_eq!(from_line::<ControlReply>(&to_line(&lacking).unwrap()).unwrap(), lacking);
}

/// A take-over is a request of its own, not a field of `set-role`: an agent
/// from before it fails to decode the line (and answers an error) instead of
/// reading a promotion to do at once.
#[test]
fn a_take_over_is_its_own_request_that_older_agents_cannot_mistake_for_a_promotion() {
    let req = ControlRequest::TakeOver { epoch: 6, peer_epoch: 5 };
    let line = to_line(&req).unwrap();
    assert_eq!(String::from_utf8(line.clone()).unwrap(), "{\"type\":\"take-over\",\"epoch\":6,\"peer_epoch\":5}\n");
    assert_eq!(from_line::<ControlRequest>(&line).unwrap(), req);
    #[derive(serde::Deserialize)]
    #[serde(tag = "type", rename_all = "kebab-case")]
    #[allow(dead_code)]
    enum Older {
        SetRole { role: Role, epoch: u64 },
    }
    assert!(from_line::<Older>(&line).is_err());
}

#[test]
fn work_messages_round_trip() {
    let replies = [
        WorkReply::NotActive { id: "x".into(), role: Role::Standby, active: Some("p121".into()) },
        WorkReply::NotActive { id: "y".into(), role: Role::OutOfService, active: None },
        WorkReply::Ack { id: "a".into(), seq: 1 << 40, registered: true, duplicate: false },
        WorkReply::Ack { id: "b".into(), seq: 0, registered: false, duplicate: true },
        WorkReply::Rejected { id: "c".into(), reason: "no work unit u".into() },
    ];
    for r in replies {
        assert_eq!(from_frame::<WorkReply>(&to_frame(&r)).unwrap(), r);
    }
    assert_eq!(WorkReply::NotActive { id: "x".into(), role: Role::Active, active: None }.id(), "x");
    for op in [
        Operation::Open { unit: "u".into(), fields: [("caller".to_string(), "alice".to_string())].into() },
        Operation::Update { unit: "u".into(), fields: Default::default() },
        Operation::Close { unit: "u".into() },
        Operation::SetPriority { unit: "u".into(), priority: 255 },
    ] {
        let req = WorkRequest { id: "r1".into(), op };
        assert_eq!(from_frame::<WorkRequest>(&to_frame(&req)).unwrap(), req);
    }
    let hello = Hello {
        proto: PROTOCOL_VERSION,
        name: "p121".into(),
        version: "2.0.0".into(),
        supported: v2(),
        enabled: v1(),
        role: Role::Active,
        epoch: 7,
        seq: Some(42),
    };
    for m in [LinkMsg::Hello(hello.clone()), LinkMsg::Hello(Hello { seq: None, ..hello }), LinkMsg::Heartbeat] {
        assert_eq!(decode_link(&encode_link(&m, &v1()).unwrap(), &v1()).unwrap(), m);
    }
    let resync = LinkMsg::Resync { reason: "gap: expected update 3, got 5".into() };
    assert_eq!(decode_link(&encode_link(&resync, &v1()).unwrap(), &v1()).unwrap(), resync);
}

#[test]
fn the_chain_tells_the_same_history_from_another() {
    let h = |ids: &[(u64, &str)]| ids.iter().fold(0, |c, (seq, id)| chain(c, *seq, id));
    assert_eq!(h(&[(1, "a"), (2, "b")]), h(&[(1, "a"), (2, "b")]));
    assert_ne!(h(&[(1, "a"), (2, "b")]), h(&[(1, "b"), (2, "a")]));
    assert_ne!(h(&[(1, "a"), (2, "b")]), h(&[(1, "a"), (2, "c")]));
    // The history before the last update counts too.
    assert_ne!(h(&[(1, "a"), (2, "b")]), h(&[(1, "x"), (2, "b")]));
    // Ids of eight bytes and more (whole words, then the tail), and ids that
    // differ only in length or in one byte of one word.
    let long = "load19a2b3c4d5e6.0.3-w12345";
    assert_eq!(h(&[(7, long)]), h(&[(7, long)]));
    let mut seen = std::collections::BTreeSet::new();
    for id in [long, "load19a2b3c4d5e6.0.3-w12346", "Load19a2b3c4d5e6.0.3-w12345", "a", "a\0", "a\0\0\0\0\0\0\0", ""] {
        for seq in [1, 2, 1 << 40] {
            assert!(seen.insert(h(&[(seq, id)])), "{seq} {id:?} collides");
        }
    }
    // A confirmation carries no units, so no feature: both versions read it.
    let msg = LinkMsg::Continue { generation: 2, seq: 9, chain: 77 };
    assert_eq!(decode_link(&encode_link(&msg, &v1()).unwrap(), &v1()).unwrap(), msg);
}
