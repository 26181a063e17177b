use super::*;

const T0: TxId = TxId::NONE;

fn perm(s: &str) -> Perm {
    s.parse().unwrap()
}

fn perms(list: &[&str]) -> Vec<Perm> {
    list.iter().map(|s| perm(s)).collect()
}

fn events(store: &mut Store, conn: ConnId) -> Vec<(String, String)> {
    std::iter::from_fn(|| store.pop_event(conn))
        .map(|e| (e.path, e.token))
        .collect()
}

fn ev(path: &str, token: &str) -> (String, String) {
    (path.to_owned(), token.to_owned())
}

/// A store with a guest domain 5 that has a home it owns.
fn with_guest() -> (Store, ConnId, ConnId) {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    let g = s.connect(DomId(5));
    s.introduce_domain(DomId(5));
    s.mkdir(d0, T0, "/local/domain/5").unwrap();
    s.set_perms(d0, T0, "/local/domain/5", &perms(&["n5"]))
        .unwrap();
    (s, d0, g)
}

#[test]
fn initial_tree_matches_xenstored() {
    let s = Store::new();
    assert_eq!(s.paths(), ["/", "/local", "/local/domain", "/tool"]);
    assert!(s.is_domain_introduced(DomId(0)));
}

#[test]
fn write_creates_parents_that_inherit_permissions() {
    let (mut s, d0, g) = with_guest();
    s.write(g, T0, "data/a/b", b"v").unwrap();
    assert_eq!(s.read(g, T0, "/local/domain/5/data/a/b").unwrap(), b"v");
    assert_eq!(s.read(g, T0, "data/a").unwrap(), b"");
    assert_eq!(
        s.get_perms(d0, T0, "/local/domain/5/data").unwrap(),
        perms(&["n5"])
    );
    assert_eq!(s.directory(g, T0, "data").unwrap(), ["a"]);
    // dom0 writing in a guest's home keeps the inherited owner.
    s.set_perms(d0, T0, "/local/domain/5", &perms(&["n5", "r7"]))
        .unwrap();
    s.write(d0, T0, "/local/domain/5/x/y", b"").unwrap();
    assert_eq!(
        s.get_perms(d0, T0, "/local/domain/5/x/y").unwrap(),
        perms(&["n5", "r7"])
    );
}

#[test]
fn unprivileged_creator_owns_what_it_creates() {
    let (mut s, d0, g) = with_guest();
    s.mkdir(d0, T0, "/shared").unwrap();
    s.set_perms(d0, T0, "/shared", &perms(&["n0", "b5"]))
        .unwrap();
    s.write(g, T0, "/shared/k", b"1").unwrap();
    assert_eq!(
        s.get_perms(d0, T0, "/shared/k").unwrap(),
        perms(&["n5", "b5"])
    );
}

#[test]
fn permissions_owner_listed_and_default() {
    let (mut s, d0, g) = with_guest();
    let other = s.connect(DomId(7));
    s.write(d0, T0, "/p", b"secret").unwrap();
    // Default "n0": nobody but dom0.
    assert_eq!(s.read(g, T0, "/p"), Err(Errno::EACCES));
    // The first entry's access is the default for unlisted domains.
    s.set_perms(d0, T0, "/p", &perms(&["r0"])).unwrap();
    assert_eq!(s.read(g, T0, "/p").unwrap(), b"secret");
    assert_eq!(s.write(g, T0, "/p", b"x"), Err(Errno::EACCES));
    // A listed domain gets its own entry, others the default.
    s.set_perms(d0, T0, "/p", &perms(&["n0", "w5"])).unwrap();
    assert_eq!(s.read(g, T0, "/p"), Err(Errno::EACCES));
    s.write(g, T0, "/p", b"x").unwrap();
    assert_eq!(s.read(other, T0, "/p"), Err(Errno::EACCES));
    // The owner has everything, whatever the letters say.
    s.set_perms(d0, T0, "/p", &perms(&["n7"])).unwrap();
    assert_eq!(s.read(other, T0, "/p").unwrap(), b"x");
    s.set_perms(other, T0, "/p", &perms(&["n7", "r5"])).unwrap();
    assert_eq!(s.read(g, T0, "/p").unwrap(), b"x");
    // Only dom0 may give a node away.
    assert_eq!(
        s.set_perms(other, T0, "/p", &perms(&["n5"])),
        Err(Errno::EPERM)
    );
    // Non-owners may not change permissions even with write access.
    s.set_perms(d0, T0, "/p", &perms(&["n7", "b5"])).unwrap();
    assert_eq!(
        s.set_perms(g, T0, "/p", &perms(&["n7"])),
        Err(Errno::EACCES)
    );
}

#[test]
fn missing_nodes_report_enoent_only_when_the_parent_is_visible() {
    let (mut s, _d0, g) = with_guest();
    assert_eq!(s.read(g, T0, "/tool/nothing"), Err(Errno::EACCES));
    assert_eq!(s.read(g, T0, "nothing"), Err(Errno::ENOENT));
    assert_eq!(s.write(g, T0, "/tool/x", b"1"), Err(Errno::EACCES));
    assert_eq!(s.mkdir(g, T0, "/newtop"), Err(Errno::EACCES));
}

#[test]
fn rm_removes_subtrees_and_tolerates_missing_leaves() {
    let (mut s, d0, _g) = with_guest();
    s.write(d0, T0, "/a/b/c", b"1").unwrap();
    s.write(d0, T0, "/a/d", b"2").unwrap();
    s.rm(d0, T0, "/a/b").unwrap();
    assert_eq!(s.directory(d0, T0, "/a").unwrap(), ["d"]);
    assert_eq!(s.read(d0, T0, "/a/b/c"), Err(Errno::ENOENT));
    // Parent exists: fine. Parent missing: ENOENT.
    s.rm(d0, T0, "/a/zz").unwrap();
    assert_eq!(s.rm(d0, T0, "/a/zz/yy"), Err(Errno::ENOENT));
    assert_eq!(s.rm(d0, T0, "/"), Err(Errno::EINVAL));
    s.rm(d0, T0, "/a").unwrap();
    assert!(!s.paths().iter().any(|p| p.starts_with("/a")));
}

#[test]
fn invalid_paths_are_einval() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    for bad in ["", "/a/", "/a//b", "/a b", "@introduceDomain", "/a.b"] {
        assert_eq!(s.write(d0, T0, bad, b""), Err(Errno::EINVAL), "{bad:?}");
        assert_eq!(s.read(d0, T0, bad), Err(Errno::EINVAL), "{bad:?}");
    }
    let long_rel = "a".repeat(2040);
    // Relative within 2048 but over 3072 once resolved is still fine (the home is short).
    s.write(d0, T0, &long_rel, b"").unwrap();
}

#[test]
fn transaction_sees_its_writes_and_a_stable_snapshot() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    s.write(d0, T0, "/k", b"a").unwrap();
    let tx = s.transaction_start(d0).unwrap();
    assert_eq!(s.read(d0, tx, "/k").unwrap(), b"a");
    s.write(d0, tx, "/k", b"b").unwrap();
    s.write(d0, tx, "/new/deep", b"n").unwrap();
    assert_eq!(s.read(d0, tx, "/k").unwrap(), b"b");
    assert_eq!(s.read(d0, T0, "/k").unwrap(), b"a");
    assert_eq!(s.read(d0, T0, "/new/deep"), Err(Errno::ENOENT));
    s.transaction_end(d0, tx, true).unwrap();
    assert_eq!(s.read(d0, T0, "/k").unwrap(), b"b");
    assert_eq!(s.read(d0, T0, "/new/deep").unwrap(), b"n");
    // An aborted transaction leaves nothing.
    let tx = s.transaction_start(d0).unwrap();
    s.write(d0, tx, "/gone", b"x").unwrap();
    s.transaction_end(d0, tx, false).unwrap();
    assert_eq!(s.read(d0, T0, "/gone"), Err(Errno::ENOENT));
    assert_eq!(s.transaction_end(d0, tx, true), Err(Errno::ENOENT));
}

#[test]
fn conflicting_commit_fails_with_eagain() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    let other = s.connect(DomId(0));
    s.write(d0, T0, "/k", b"a").unwrap();
    // Like test-xenstore's "ta err": read in tx, outside write, tx keeps its copy, commit fails.
    let tx = s.transaction_start(d0).unwrap();
    s.read(d0, tx, "/k").unwrap();
    s.write(other, T0, "/k", b"b").unwrap();
    assert_eq!(s.read(d0, tx, "/k").unwrap(), b"a");
    s.write(d0, tx, "/k", b"c").unwrap();
    assert_eq!(s.transaction_end(d0, tx, true), Err(Errno::EAGAIN));
    assert_eq!(s.read(d0, T0, "/k").unwrap(), b"b");
    // A read-only dependency conflicts too.
    let tx = s.transaction_start(d0).unwrap();
    s.read(d0, tx, "/k").unwrap();
    s.write(d0, tx, "/other", b"1").unwrap();
    s.rm(other, T0, "/k").unwrap();
    assert_eq!(s.transaction_end(d0, tx, true), Err(Errno::EAGAIN));
    // Untouched nodes do not. (Creating a node touches its parent, as in xenstored, so use
    // existing ones.)
    s.write(d0, T0, "/mine", b"0").unwrap();
    s.write(d0, T0, "/unrelated", b"0").unwrap();
    let tx = s.transaction_start(d0).unwrap();
    s.write(d0, tx, "/mine", b"1").unwrap();
    s.write(other, T0, "/unrelated", b"1").unwrap();
    s.transaction_end(d0, tx, true).unwrap();
}

#[test]
fn transaction_ids_belong_to_their_connection() {
    let mut s = Store::new();
    let a = s.connect(DomId(0));
    let b = s.connect(DomId(0));
    let tx = s.transaction_start(a).unwrap();
    assert_eq!(s.read(b, tx, "/"), Err(Errno::ENOENT));
    assert_eq!(s.read(a, TxId(999_999), "/"), Err(Errno::ENOENT));
    s.disconnect(a);
    assert_eq!(s.read(a, T0, "/"), Err(Errno::EIO));
}

#[test]
fn watch_fires_on_register_for_subtree_and_not_for_siblings() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    s.watch(d0, "/w", "tok").unwrap();
    assert_eq!(events(&mut s, d0), [ev("/w", "tok")]);
    s.write(d0, T0, "/w", b"1").unwrap();
    s.write(d0, T0, "/w/child/deep", b"2").unwrap();
    s.write(d0, T0, "/wx", b"3").unwrap();
    s.write(d0, T0, "/other", b"4").unwrap();
    assert_eq!(
        events(&mut s, d0),
        [ev("/w", "tok"), ev("/w/child/deep", "tok")]
    );
    assert_eq!(s.watch(d0, "/w", "tok"), Err(Errno::EEXIST));
    s.unwatch(d0, "/w", "tok").unwrap();
    assert_eq!(s.unwatch(d0, "/w", "tok"), Err(Errno::ENOENT));
    s.write(d0, T0, "/w", b"5").unwrap();
    assert!(events(&mut s, d0).is_empty());
}

#[test]
fn rm_fires_the_removed_node_and_exact_watches_on_descendants() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    s.write(d0, T0, "/a/b/c", b"").unwrap();
    s.watch(d0, "/a", "top").unwrap();
    s.watch(d0, "/a/b/c", "leaf").unwrap();
    s.watch(d0, "/a/b/c/never", "deeper").unwrap();
    events(&mut s, d0);
    s.rm(d0, T0, "/a/b").unwrap();
    let mut got = events(&mut s, d0);
    got.sort();
    assert_eq!(got, [ev("/a/b", "top"), ev("/a/b/c", "leaf")]);
}

#[test]
fn relative_watches_report_relative_paths() {
    let (mut s, d0, g) = with_guest();
    s.watch(g, "device", "t").unwrap();
    assert_eq!(events(&mut s, g), [ev("device", "t")]);
    s.write(d0, T0, "/local/domain/5/device/vif", b"").unwrap();
    assert_eq!(events(&mut s, g), [ev("device/vif", "t")]);
}

#[test]
fn watches_need_read_permission_on_the_node() {
    let (mut s, d0, g) = with_guest();
    s.mkdir(d0, T0, "/pub").unwrap();
    s.set_perms(d0, T0, "/pub", &perms(&["r0"])).unwrap();
    s.watch(g, "/pub", "t").unwrap();
    events(&mut s, g);
    s.write(d0, T0, "/pub/open", b"").unwrap();
    s.write(d0, T0, "/pub/hidden", b"").unwrap();
    s.set_perms(d0, T0, "/pub/hidden", &perms(&["n0"])).unwrap();
    s.write(d0, T0, "/pub/hidden", b"again").unwrap();
    // The set_perms event still fires: the node was readable under its old permissions.
    assert_eq!(
        events(&mut s, g),
        [
            ev("/pub/open", "t"),
            ev("/pub/hidden", "t"),
            ev("/pub/hidden", "t")
        ]
    );
}

#[test]
fn transaction_events_fire_at_commit_only() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    s.watch(d0, "/t", "x").unwrap();
    events(&mut s, d0);
    let tx = s.transaction_start(d0).unwrap();
    s.write(d0, tx, "/t/a", b"").unwrap();
    assert!(events(&mut s, d0).is_empty());
    s.transaction_end(d0, tx, true).unwrap();
    assert_eq!(events(&mut s, d0), [ev("/t/a", "x")]);
    let tx = s.transaction_start(d0).unwrap();
    s.write(d0, tx, "/t/b", b"").unwrap();
    s.transaction_end(d0, tx, false).unwrap();
    assert!(events(&mut s, d0).is_empty());
}

#[test]
fn special_watches_fire_on_introduce_and_release() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    let g = s.connect(DomId(9));
    s.watch(d0, "@introduceDomain", "in").unwrap();
    s.watch(d0, "@releaseDomain", "out").unwrap();
    s.watch(g, "@releaseDomain", "guest").unwrap();
    assert_eq!(
        events(&mut s, d0),
        [ev("@introduceDomain", "in"), ev("@releaseDomain", "out")]
    );
    events(&mut s, g);
    assert!(s.introduce_domain(DomId(3)));
    assert!(!s.introduce_domain(DomId(3)));
    assert_eq!(events(&mut s, d0), [ev("@introduceDomain", "in")]);
    assert_eq!(s.release_domain(DomId(3)), Ok(vec![]));
    assert_eq!(events(&mut s, d0), [ev("@releaseDomain", "out")]);
    // Special nodes are dom0's ("n0") unless dom0 opens them up.
    assert!(events(&mut s, g).is_empty());
    assert_eq!(
        s.get_perms(d0, T0, "@releaseDomain").unwrap(),
        perms(&["n0"])
    );
    assert_eq!(
        s.set_perms(g, T0, "@releaseDomain", &perms(&["r0"])),
        Err(Errno::EACCES)
    );
    s.set_perms(d0, T0, "@releaseDomain", &perms(&["r0"]))
        .unwrap();
    s.introduce_domain(DomId(4));
    s.release_domain(DomId(4)).unwrap();
    assert_eq!(events(&mut s, g), [ev("@releaseDomain", "guest")]);
    assert_eq!(s.release_domain(DomId(4)), Err(Errno::ENOENT));
    assert_eq!(s.release_domain(DomId(0)), Err(Errno::EINVAL));
}

#[test]
fn release_closes_the_domains_connections() {
    let (mut s, _d0, g) = with_guest();
    s.watch(g, "x", "t").unwrap();
    assert_eq!(s.release_domain(DomId(5)), Ok(vec![g]));
    assert!(!s.is_connected(g));
    assert_eq!(s.read(g, T0, "x"), Err(Errno::EIO));
}

#[test]
fn node_quota_is_enospc_and_value_quota_is_e2big() {
    let quotas = Quotas {
        max_nodes: 5,
        max_value_size: 8,
        ..Quotas::default()
    };
    let mut s = Store::with_quotas(quotas);
    let d0 = s.connect(DomId(0));
    let g = s.connect(DomId(5));
    s.mkdir(d0, T0, "/local/domain/5").unwrap();
    s.set_perms(d0, T0, "/local/domain/5", &perms(&["n5"]))
        .unwrap();
    assert_eq!(s.nodes_owned_by(DomId(5)), 1);
    assert_eq!(s.write(g, T0, "v", b"123456789"), Err(Errno::E2BIG));
    s.write(g, T0, "v", b"12345678").unwrap();
    s.write(g, T0, "a/b", b"").unwrap();
    s.write(g, T0, "c", b"").unwrap();
    assert_eq!(s.nodes_owned_by(DomId(5)), 5);
    assert_eq!(s.write(g, T0, "d", b""), Err(Errno::ENOSPC));
    // Inside a transaction the count includes the transaction's own creations.
    s.rm(g, T0, "c").unwrap();
    let tx = s.transaction_start(g).unwrap();
    s.write(g, tx, "e", b"").unwrap();
    assert_eq!(s.write(g, tx, "f", b""), Err(Errno::ENOSPC));
    s.transaction_end(g, tx, true).unwrap();
    assert_eq!(s.nodes_owned_by(DomId(5)), 5);
    // dom0 is not limited by quotas, only by what fits in one message.
    s.write(d0, T0, "/big", &[b'x'; 100]).unwrap();
    s.write(d0, T0, "/big", &[b'x'; 4091]).unwrap();
    assert_eq!(s.write(d0, T0, "/big", &[b'x'; 4092]), Err(Errno::E2BIG));
    for i in 0..10 {
        s.write(d0, T0, &format!("/many/{i}"), b"").unwrap();
    }
}

#[test]
fn watch_transaction_and_permission_quotas() {
    let quotas = Quotas {
        max_watches: 2,
        max_transactions: 2,
        max_perms: 2,
        ..Quotas::default()
    };
    let (mut s, d0, g) = {
        let mut s = Store::with_quotas(quotas);
        let d0 = s.connect(DomId(0));
        let g = s.connect(DomId(5));
        s.mkdir(d0, T0, "/local/domain/5").unwrap();
        s.set_perms(d0, T0, "/local/domain/5", &perms(&["n5"]))
            .unwrap();
        (s, d0, g)
    };
    let g2 = s.connect(DomId(5));
    s.watch(g, "a", "1").unwrap();
    s.watch(g2, "b", "2").unwrap();
    assert_eq!(s.watch(g, "c", "3"), Err(Errno::E2BIG));
    s.transaction_start(g).unwrap();
    s.transaction_start(g).unwrap();
    assert_eq!(s.transaction_start(g), Err(Errno::ENOSPC));
    // The guest's limit covers its other connections too.
    assert_eq!(s.transaction_start(g2), Err(Errno::ENOSPC));
    assert_eq!(
        s.set_perms(g, T0, "/local/domain/5", &perms(&["n5", "r1", "r2"])),
        Err(Errno::ENOSPC)
    );
    s.set_perms(d0, T0, "/local/domain/5", &perms(&["n5", "r1", "r2"]))
        .unwrap();
    // reset_watches clears watches and transactions.
    s.reset_watches(g).unwrap();
    s.watch(g, "c", "3").unwrap();
    s.transaction_start(g).unwrap();
}

#[test]
fn directory_part_chunks_long_listings_like_xenstored() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    let names: Vec<String> = (0..600).map(|i| format!("child-number-{i:04}")).collect();
    for n in &names {
        s.write(d0, T0, &format!("/big/{n}"), b"").unwrap();
    }
    let req = Message::new(wire::MsgType::Directory, 1, T0, b"/big\0".to_vec());
    let reply = s.handle_message(d0, &req).reply;
    assert_eq!(reply.payload, b"E2BIG\0");
    let mut got = Vec::new();
    let mut offset = 0u32;
    loop {
        let (_, chunk, done) = s.directory_part(d0, T0, "/big", offset).unwrap();
        for n in chunk {
            offset += n.len() as u32 + 1;
            got.push(n);
        }
        if done {
            break;
        }
    }
    assert_eq!(got, names);
}

#[test]
fn handle_message_checks_privilege_and_transaction_ids() {
    let (mut s, d0, g) = with_guest();
    let msg = |t, payload: &[u8], tx| Message::new(t, 7, TxId(tx), payload.to_vec());
    use wire::MsgType as M;
    let r = s.handle_message(g, &msg(M::Introduce, b"9\x000\x000\0", 0));
    assert_eq!(r.reply.payload, b"EACCES\0");
    assert_eq!(r.reply.msg_type, M::Error);
    assert_eq!(r.reply.req_id, 7);
    let r = s.handle_message(d0, &msg(M::Introduce, b"9\x000\x000\0", 0));
    assert_eq!(r.reply.payload, b"OK\0");
    assert_eq!(r.effect, Some(Effect::Introduced(DomId(9))));
    let r = s.handle_message(d0, &msg(M::Read, b"/\0", 4242));
    assert_eq!(r.reply.payload, b"ENOENT\0");
    let r = s.handle_message(d0, &msg(M::Read, b"/", 0));
    assert_eq!(r.reply.payload, b"EINVAL\0");
    let r = s.handle_message(d0, &msg(M::TransactionStart, b"\0", 0));
    assert_eq!(r.reply.msg_type, M::TransactionStart);
    let tx: u32 = std::str::from_utf8(r.reply.payload.strip_suffix(b"\0").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let r = s.handle_message(d0, &msg(M::TransactionStart, b"\0", tx));
    assert_eq!(r.reply.payload, b"EBUSY\0");
    let r = s.handle_message(d0, &msg(M::Write, b"/k\0v", tx));
    assert_eq!(r.reply.payload, b"OK\0");
    assert_eq!(r.reply.tx_id, TxId(tx));
    let r = s.handle_message(d0, &msg(M::TransactionEnd, b"T\0", tx));
    assert_eq!(r.reply.payload, b"OK\0");
    let r = s.handle_message(d0, &msg(M::Read, b"/k\0", 0));
    assert_eq!(
        (r.reply.msg_type, r.reply.payload),
        (M::Read, b"v".to_vec())
    );
    let r = s.handle_message(d0, &msg(M::GetDomainPath, b"5\0", 0));
    assert_eq!(r.reply.payload, b"/local/domain/5\0");
    let r = s.handle_message(d0, &msg(M::IsDomainIntroduced, b"9\0", 0));
    assert_eq!(r.reply.payload, b"T\0");
    let r = s.handle_message(d0, &msg(M::Release, b"9\0", 0));
    assert_eq!(r.effect, Some(Effect::Released(DomId(9), vec![])));
    // xenstored has no handler for the types only it sends: ENOSYS.
    let r = s.handle_message(d0, &msg(M::WatchEvent, b"/\0t\0", 0));
    assert_eq!(r.reply.payload, b"ENOSYS\0");
}

// ---------------------------------------------------------------------------------------------
// Regression tests from the adversarial review.

#[test]
fn transactions_cannot_bypass_the_node_quota() {
    let quotas = Quotas {
        max_nodes: 10,
        ..Quotas::default()
    };
    let mut s = Store::with_quotas(quotas);
    let d0 = s.connect(DomId(0));
    let g = s.connect(DomId(5));
    s.mkdir(d0, T0, "/local/domain/5").unwrap();
    s.set_perms(d0, T0, "/local/domain/5", &perms(&["n5"]))
        .unwrap();
    // Two transactions, each within the quota on its own, creating under different parents (so
    // they do not conflict): together they would exceed it.
    s.mkdir(d0, T0, "/local/domain/5/b").unwrap();
    let t1 = s.transaction_start(g).unwrap();
    let t2 = s.transaction_start(g).unwrap();
    for i in 0..6 {
        s.write(g, t1, &format!("a{i}"), b"").unwrap();
    }
    for i in 0..6 {
        s.write(g, t2, &format!("b/y{i}"), b"").unwrap();
    }
    s.transaction_end(g, t1, true).unwrap();
    assert_eq!(s.nodes_owned_by(DomId(5)), 8);
    assert_eq!(s.transaction_end(g, t2, true), Err(Errno::ENOSPC));
    // What fits still commits.
    let t3 = s.transaction_start(g).unwrap();
    s.write(g, t3, "b/z", b"").unwrap();
    s.transaction_end(g, t3, true).unwrap();
    assert!(s.nodes_owned_by(DomId(5)) <= 10);
}

#[test]
fn transaction_touching_too_many_nodes_is_enospc() {
    let (mut s, d0, g) = with_guest();
    let tx = s.transaction_start(g).unwrap();
    // Reading absent nodes must not grow the transaction without bound.
    let mut refused = None;
    for i in 0..5000 {
        match s.read(g, tx, &format!("missing{i}")) {
            Err(Errno::ENOENT) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
            Ok(_) => panic!("read a missing node"),
        }
    }
    let (i, e) = refused.expect("an unprivileged transaction touched 5000 nodes");
    assert_eq!(e, Errno::ENOSPC);
    assert!(i <= s.quotas().max_transaction_nodes, "{i}");
    // dom0 is not limited.
    let tx0 = s.transaction_start(d0).unwrap();
    for i in 0..3000 {
        assert_eq!(s.read(d0, tx0, &format!("/missing{i}")), Err(Errno::ENOENT));
    }
}

#[test]
fn overlong_watch_event_is_dropped_like_xenstored() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    let token = "t".repeat(3000);
    s.watch(d0, "/", &token).unwrap();
    assert_eq!(events(&mut s, d0).len(), 1);
    let long = format!("/{}", "p".repeat(1500));
    s.write(d0, T0, &long, b"").unwrap();
    // `path\0token\0` would be over 4096 bytes: xenstored does not send it.
    assert_eq!(events(&mut s, d0), []);
    s.write(d0, T0, "/short", b"").unwrap();
    assert_eq!(events(&mut s, d0), [ev("/short", &token)]);
}

#[test]
fn guest_cannot_read_special_path_perms_it_may_not_read() {
    let (mut s, d0, g) = with_guest();
    assert_eq!(s.get_perms(g, T0, "@introduceDomain"), Err(Errno::EACCES));
    assert_eq!(
        s.get_perms(d0, T0, "@introduceDomain").unwrap(),
        perms(&["n0"])
    );
    s.set_perms(d0, T0, "@introduceDomain", &perms(&["n0", "r5"]))
        .unwrap();
    assert_eq!(
        s.get_perms(g, T0, "@introduceDomain").unwrap(),
        perms(&["n0", "r5"])
    );
}

fn msg(t: wire::MsgType, tx: u32, payload: &[u8]) -> Message {
    Message::new(t, 7, TxId(tx), payload.to_vec())
}

fn reply_errno(h: &Handled) -> Option<&[u8]> {
    (h.reply.msg_type == wire::MsgType::Error).then_some(h.reply.payload.as_slice())
}

#[test]
fn watch_and_unwatch_ignore_the_transaction_id_like_xenstored() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    let h = s.handle_message(d0, &msg(wire::MsgType::Watch, 99, b"/a\0tok\0"));
    assert_eq!(h.reply.payload, b"OK\0");
    let h = s.handle_message(d0, &msg(wire::MsgType::Unwatch, 98, b"/a\0tok\0"));
    assert_eq!(h.reply.payload, b"OK\0");
}

#[test]
fn privileged_request_from_a_guest_is_eacces_before_the_transaction_lookup() {
    let (mut s, _d0, g) = with_guest();
    let h = s.handle_message(g, &msg(wire::MsgType::Introduce, 42, b"6\x000\x000\0"));
    assert_eq!(reply_errno(&h), Some(&b"EACCES\0"[..]));
    let h = s.handle_message(g, &msg(wire::MsgType::SetTarget, 0, b"5\x006\0"));
    assert_eq!(reply_errno(&h), Some(&b"EACCES\0"[..]));
    let h = s.handle_message(g, &msg(wire::MsgType::Release, 0, b"5\0"));
    assert_eq!(reply_errno(&h), Some(&b"EACCES\0"[..]));
    assert!(s.is_domain_introduced(DomId(5)));
    assert!(!s.is_domain_introduced(DomId(6)));
}

#[test]
fn daemon_only_message_types_sent_as_requests_are_enosys_like_xenstored() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    for t in [
        wire::MsgType::WatchEvent,
        wire::MsgType::Error,
        wire::MsgType::Invalid,
    ] {
        let h = s.handle_message(d0, &msg(t, 0, b"x\0"));
        assert_eq!(reply_errno(&h), Some(&b"ENOSYS\0"[..]), "{t:?}");
        assert_eq!(h.reply.req_id, 7);
    }
}

#[test]
fn tx_reading_a_node_deleted_and_recreated_meanwhile_conflicts() {
    let mut s = Store::new();
    let d0 = s.connect(DomId(0));
    let other = s.connect(DomId(0));
    s.write(d0, T0, "/a", b"1").unwrap();
    let tx = s.transaction_start(d0).unwrap();
    assert_eq!(s.read(d0, tx, "/a").unwrap(), b"1");
    s.rm(other, T0, "/a").unwrap();
    s.write(other, T0, "/a", b"1").unwrap();
    s.write(d0, tx, "/b", b"x").unwrap();
    assert_eq!(s.transaction_end(d0, tx, true), Err(Errno::EAGAIN));
    // rm inside a transaction of a subtree that gained a child meanwhile.
    s.write(d0, T0, "/c/d", b"").unwrap();
    let tx = s.transaction_start(d0).unwrap();
    s.rm(d0, tx, "/c").unwrap();
    s.write(other, T0, "/c/e", b"").unwrap();
    assert_eq!(s.transaction_end(d0, tx, true), Err(Errno::EAGAIN));
    assert_eq!(s.directory(d0, T0, "/c").unwrap(), ["d", "e"]);
}

#[test]
fn guest_transaction_limit_is_per_domain_not_per_connection() {
    let (mut s, d0, g) = with_guest();
    let g2 = s.connect(DomId(5));
    let max = s.quotas().max_transactions;
    for _ in 0..max {
        s.transaction_start(g).unwrap();
    }
    // Another connection of the same guest does not get ten more (each may copy 1024 nodes).
    assert_eq!(s.transaction_start(g2), Err(Errno::ENOSPC));
    // dom0's connections keep their own limit each.
    let d1 = s.connect(DomId(0));
    for _ in 0..max {
        s.transaction_start(d0).unwrap();
    }
    s.transaction_start(d1).unwrap();
}
