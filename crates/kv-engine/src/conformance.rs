//! Conformance tests: the same assertions run against every engine.

use crate::{KvEngine, MemEngine, RocksEngine, WriteBatch, for_each_in_range, prefix_end};

fn engines() -> Vec<(Box<dyn KvEngine>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksEngine::open(dir.path()).unwrap();
    vec![(Box::new(MemEngine::new()), None), (Box::new(rocks), Some(dir))]
}

#[test]
fn put_get_delete() {
    for (e, _d) in engines() {
        assert_eq!(e.get(b"a").unwrap(), None);
        let mut b = WriteBatch::new();
        b.put(b"a".to_vec(), b"1".to_vec());
        b.put(b"b".to_vec(), b"2".to_vec());
        e.write(b, true).unwrap();
        assert_eq!(e.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        let mut b = WriteBatch::new();
        b.delete(b"a".to_vec());
        b.put(b"b".to_vec(), b"3".to_vec());
        e.write(b, false).unwrap();
        assert_eq!(e.get(b"a").unwrap(), None);
        assert_eq!(e.get(b"b").unwrap().as_deref(), Some(&b"3"[..]));
    }
}

#[test]
fn batch_applies_in_order() {
    for (e, _d) in engines() {
        let mut b = WriteBatch::new();
        b.put(b"k".to_vec(), b"1".to_vec());
        b.delete(b"k".to_vec());
        b.put(b"j".to_vec(), b"x".to_vec());
        b.delete(b"j".to_vec());
        b.put(b"j".to_vec(), b"y".to_vec());
        e.write(b, true).unwrap();
        assert_eq!(e.get(b"k").unwrap(), None);
        assert_eq!(e.get(b"j").unwrap().as_deref(), Some(&b"y"[..]));
    }
}

#[test]
fn scan_is_ordered_bounded_and_limited() {
    for (e, _d) in engines() {
        let mut b = WriteBatch::new();
        for i in 0u32..100 {
            b.put(format!("p/{i:03}").into_bytes(), i.to_be_bytes().to_vec());
        }
        b.put(b"q".to_vec(), b"other".to_vec());
        e.write(b, true).unwrap();
        let all = e.scan(b"p/", prefix_end(b"p/").as_deref(), 1000).unwrap();
        assert_eq!(all.len(), 100);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        let some = e.scan(b"p/010", Some(b"p/020"), 5).unwrap();
        assert_eq!(some.len(), 5);
        assert_eq!(some[0].0, b"p/010");
        assert!(e.scan(b"p/050", Some(b"p/050"), 10).unwrap().is_empty());
        let mut n = 0;
        for_each_in_range(&*e, b"p/", prefix_end(b"p/").as_deref(), 7, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 100);
        let mut tail = 0;
        for_each_in_range(&*e, b"", None, 3, |_, _| {
            tail += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(tail, 101);
    }
}

#[test]
fn snapshots_see_the_moment_they_were_taken() {
    for (e, _d) in engines() {
        let mut b = WriteBatch::new();
        for i in 0u32..50 {
            b.put(format!("s/{i:03}").into_bytes(), b"old".to_vec());
        }
        e.write(b, false).unwrap();
        let view = e.snapshot().unwrap();
        let mut b = WriteBatch::new();
        b.put(b"s/000".to_vec(), b"new".to_vec());
        b.delete(b"s/001".to_vec());
        b.put(b"s/100".to_vec(), b"added".to_vec());
        e.write(b, true).unwrap();
        let mut seen = Vec::new();
        view.for_each(b"s/", prefix_end(b"s/").as_deref(), &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 50, "the view neither loses a deleted key nor gains an added one");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
        assert!(seen.iter().all(|(_, v)| v == b"old"), "the view keeps the values of its moment");
        // Bounds, and an error from the visitor stops the walk and comes back.
        let mut n = 0;
        view.for_each(b"s/010", Some(b"s/020"), &mut |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 10);
        let err = view.for_each(b"", None, &mut |_, _| Err(crate::KvError::Backend("stop".into())));
        assert!(err.is_err());
        // The engine itself sees the new state.
        assert_eq!(e.get(b"s/000").unwrap().as_deref(), Some(&b"new"[..]));
        drop(view);
    }
}

#[test]
fn prefix_end_handles_ff() {
    assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
    assert_eq!(prefix_end(&[0xff, 0xff]), None);
}

#[test]
fn rocks_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = RocksEngine::open(dir.path()).unwrap();
        let mut b = WriteBatch::new();
        b.put(b"durable".to_vec(), b"yes".to_vec());
        e.write(b, true).unwrap();
    }
    let e = RocksEngine::open(dir.path()).unwrap();
    assert_eq!(e.get(b"durable").unwrap().as_deref(), Some(&b"yes"[..]));
}
