//! locksmith's semaphore value in etcd (any client may have written it): decode never panics;
//! what decodes re-encodes to something that decodes to the same value; lock and unlock keep
//! the count consistent with the holders.
#![no_main]

use fastpatch_locksmith_core::semaphore::Semaphore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut sem) = Semaphore::decode(data) else {
        return;
    };
    let encoded = sem.encode();
    let again = Semaphore::decode(encoded.as_bytes())
        .unwrap_or_else(|e| panic!("our own encoding does not decode: {e}: {encoded}"));
    assert_eq!(
        again, sem,
        "value changed across encode + decode: {encoded}"
    );
    let before = sem.clone();
    if !sem.is_holder("fuzz-holder") && sem.lock("fuzz-holder").is_ok() {
        assert!(sem.holders().iter().any(|h| h == "fuzz-holder"));
        sem.unlock("fuzz-holder")
            .expect("the holder that just locked can unlock");
        assert_eq!(
            sem.holders(),
            before.holders(),
            "lock + unlock changed the holders"
        );
        assert_eq!(
            sem.semaphore, before.semaphore,
            "lock + unlock changed the count"
        );
    }
    // A hand-edited value with any counts: releasing a holder and resizing to the holders
    // must not overflow.
    if let Some(first) = sem.holders().first().cloned() {
        sem.unlock(&first).expect("a listed holder can unlock");
    }
    let _ = sem.set_max(sem.holders().len() as i64);
    let _ = sem.set_max(i64::MAX);
});
