#![no_main]
//! Format 4 streams. Every record carries a CRC-32C and the end record a BLAKE3 digest of all
//! records, so a random mutation would almost always die at the first checksum. The mutator
//! therefore reseals what it mutated: most mutants get their checksums recomputed (and half of
//! those their end record's counts and digest too), so the order, range, compression and end
//! checks behind them are reached; one in eight is left raw, for the checksum checks themselves.
//! The corpus stays a set of real stream files.

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

fuzz_target!(|data: &[u8]| lvmsync::fuzzing::stream(data));

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = fuzzer_mutate(data, size, max_size);
    match seed % 8 {
        0 => {}
        1..=3 => lvmsync::fuzzing::reseal_v4(&mut data[..size], false),
        _ => lvmsync::fuzzing::reseal_v4(&mut data[..size], true),
    }
    size
});
