//! The GPT on-disk structures: header and partition entry array, parsed from and serialized to
//! raw bytes. Unknown and reserved bytes are kept as read, so a rewrite changes only what we mean
//! to change. Pure: no I/O.

use uuid::Uuid;

pub const SIGNATURE: &[u8; 8] = b"EFI PART";
pub const HEADER_MIN_SIZE: u32 = 92;
pub const REVISION_1_0: u32 = 0x0001_0000;
pub const ENTRY_MIN_SIZE: u32 = 128;
/// Upper bound on the entry array we accept (sanity cap against garbage headers).
pub const MAX_ENTRY_ARRAY_BYTES: u64 = 1 << 20;

// Header field offsets (UEFI spec, table 5-5).
const OFF_CRC: usize = 16;
const OFF_MY_LBA: usize = 24;
const OFF_ALT_LBA: usize = 32;
const OFF_FIRST_USABLE: usize = 40;
const OFF_LAST_USABLE: usize = 48;
const OFF_DISK_GUID: usize = 56;
const OFF_ENTRIES_LBA: usize = 72;
const OFF_NUM_ENTRIES: usize = 80;
const OFF_ENTRY_SIZE: usize = 84;
const OFF_ENTRIES_CRC: usize = 88;

/// A GPT header, kept as its whole sector so bytes we do not model survive a rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    raw: Vec<u8>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Why a header sector is not a usable GPT header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    #[error("no GPT signature")]
    NoSignature,
    #[error("header size {0} is out of range")]
    BadSize(u32),
    #[error("header CRC mismatch")]
    BadCrc,
    #[error("header says it lives at LBA {found}, but it was read from LBA {expected}")]
    WrongLocation { found: u64, expected: u64 },
    #[error("entry array geometry is invalid ({0})")]
    BadGeometry(String),
    #[error(
        "header describes a disk of {needed} sectors but the device has {actual} (truncated?)"
    )]
    BeyondEnd { needed: u64, actual: u64 },
    #[error("partition entries CRC mismatch")]
    BadEntriesCrc,
}

impl Header {
    /// Parses and validates a header sector read from `lba`. The entry array CRC is checked
    /// separately (see [`Header::check_entries`]) once the entries are read.
    pub fn parse(sector: &[u8], lba: u64, sector_size: u64) -> Result<Header, HeaderProblem> {
        if sector.len() < HEADER_MIN_SIZE as usize || &sector[..8] != SIGNATURE {
            return Err(HeaderProblem::NoSignature);
        }
        let size = u32_at(sector, 12);
        if size < HEADER_MIN_SIZE || u64::from(size) > sector_size {
            return Err(HeaderProblem::BadSize(size));
        }
        let h = Header {
            raw: sector.to_vec(),
        };
        if h.computed_crc() != u32_at(sector, OFF_CRC) {
            return Err(HeaderProblem::BadCrc);
        }
        if h.my_lba() != lba {
            return Err(HeaderProblem::WrongLocation {
                found: h.my_lba(),
                expected: lba,
            });
        }
        let entry_size = h.entry_size();
        if entry_size < ENTRY_MIN_SIZE || !entry_size.is_multiple_of(8) {
            return Err(HeaderProblem::BadGeometry(format!(
                "entry size {entry_size}"
            )));
        }
        if h.entries_bytes() > MAX_ENTRY_ARRAY_BYTES || h.num_entries() == 0 {
            return Err(HeaderProblem::BadGeometry(format!(
                "{} entries of {} bytes",
                h.num_entries(),
                entry_size
            )));
        }
        if h.first_usable() > h.last_usable() {
            return Err(HeaderProblem::BadGeometry(
                "first usable LBA after last usable".into(),
            ));
        }
        Ok(h)
    }

    /// Builds a fresh header sector (used when creating a disk).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sector_size: u64,
        my_lba: u64,
        alt_lba: u64,
        first_usable: u64,
        last_usable: u64,
        disk_guid: Uuid,
        entries_lba: u64,
        num_entries: u32,
    ) -> Header {
        let mut raw = vec![0u8; sector_size as usize];
        raw[..8].copy_from_slice(SIGNATURE);
        put_u32(&mut raw, 8, REVISION_1_0);
        put_u32(&mut raw, 12, HEADER_MIN_SIZE);
        put_u64(&mut raw, OFF_FIRST_USABLE, first_usable);
        put_u64(&mut raw, OFF_LAST_USABLE, last_usable);
        raw[OFF_DISK_GUID..OFF_DISK_GUID + 16].copy_from_slice(&disk_guid.to_bytes_le());
        put_u32(&mut raw, OFF_NUM_ENTRIES, num_entries);
        put_u32(&mut raw, OFF_ENTRY_SIZE, ENTRY_MIN_SIZE);
        let mut h = Header { raw };
        h.set_location(my_lba, alt_lba, entries_lba);
        h
    }

    fn header_size(&self) -> usize {
        u32_at(&self.raw, 12) as usize
    }

    fn computed_crc(&self) -> u32 {
        let mut covered = self.raw[..self.header_size()].to_vec();
        covered[OFF_CRC..OFF_CRC + 4].fill(0);
        crc32fast::hash(&covered)
    }

    pub fn my_lba(&self) -> u64 {
        u64_at(&self.raw, OFF_MY_LBA)
    }
    pub fn alternate_lba(&self) -> u64 {
        u64_at(&self.raw, OFF_ALT_LBA)
    }
    pub fn first_usable(&self) -> u64 {
        u64_at(&self.raw, OFF_FIRST_USABLE)
    }
    pub fn last_usable(&self) -> u64 {
        u64_at(&self.raw, OFF_LAST_USABLE)
    }
    pub fn disk_guid(&self) -> Uuid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.raw[OFF_DISK_GUID..OFF_DISK_GUID + 16]);
        Uuid::from_bytes_le(b)
    }
    pub fn entries_lba(&self) -> u64 {
        u64_at(&self.raw, OFF_ENTRIES_LBA)
    }
    pub fn num_entries(&self) -> u32 {
        u32_at(&self.raw, OFF_NUM_ENTRIES)
    }
    pub fn entry_size(&self) -> u32 {
        u32_at(&self.raw, OFF_ENTRY_SIZE)
    }
    pub fn entries_crc(&self) -> u32 {
        u32_at(&self.raw, OFF_ENTRIES_CRC)
    }
    pub fn entries_bytes(&self) -> u64 {
        u64::from(self.num_entries()) * u64::from(self.entry_size())
    }
    pub fn entries_sectors(&self, sector_size: u64) -> u64 {
        self.entries_bytes().div_ceil(sector_size)
    }

    /// Checks that every location the header names lies on a device of `sectors` sectors, in
    /// the order the spec requires, so that later LBA arithmetic cannot overflow or overlap.
    pub fn check_geometry(&self, ss: u64, sectors: u64) -> Result<(), HeaderProblem> {
        let bad = |what: &str| Err(HeaderProblem::BadGeometry(what.to_string()));
        let furthest = self
            .my_lba()
            .max(self.alternate_lba())
            .max(self.last_usable());
        if furthest >= sectors {
            return Err(HeaderProblem::BeyondEnd {
                needed: furthest.saturating_add(1),
                actual: sectors,
            });
        }
        let es = self.entries_sectors(ss);
        let Some(entries_end) = self.entries_lba().checked_add(es) else {
            return bad("entry array position overflows");
        };
        if self.my_lba() == 1 {
            // Primary: entries between the header and the first usable LBA; backup after the end.
            if self.entries_lba() < 2 || entries_end > self.first_usable() {
                return bad("primary entry array overlaps the header or the usable area");
            }
            if self.alternate_lba() <= self.last_usable().saturating_add(es) {
                return bad("backup header location overlaps the usable area");
            }
        } else if self.entries_lba() <= self.last_usable()
            || entries_end > self.my_lba()
            || self.alternate_lba() != 1
        {
            return bad("backup entry array or header out of place");
        }
        Ok(())
    }

    /// Checks that every used entry lies inside the usable area.
    pub fn check_entry_bounds(&self, entries: &[u8]) -> Result<(), HeaderProblem> {
        for i in 0..self.num_entries() {
            let e = entry_at(entries, self.entry_size(), i);
            if e.type_guid.is_nil() {
                continue;
            }
            if e.first_lba > e.last_lba
                || e.first_lba < self.first_usable()
                || e.last_lba > self.last_usable()
            {
                return Err(HeaderProblem::BadGeometry(format!(
                    "partition {} spans LBA {}..{}, outside the usable area {}..{}",
                    i + 1,
                    e.first_lba,
                    e.last_lba,
                    self.first_usable(),
                    self.last_usable()
                )));
            }
        }
        Ok(())
    }

    /// Checks that `entries` is the array this header describes.
    pub fn check_entries(&self, entries: &[u8]) -> Result<(), HeaderProblem> {
        if crc32fast::hash(entries) == self.entries_crc() {
            Ok(())
        } else {
            Err(HeaderProblem::BadEntriesCrc)
        }
    }

    /// Moves this header to another location (primary ↔ backup). Refreshes the header CRC.
    pub fn set_location(&mut self, my_lba: u64, alt_lba: u64, entries_lba: u64) {
        put_u64(&mut self.raw, OFF_MY_LBA, my_lba);
        put_u64(&mut self.raw, OFF_ALT_LBA, alt_lba);
        put_u64(&mut self.raw, OFF_ENTRIES_LBA, entries_lba);
        self.seal();
    }

    /// Points the header at a new entry array. Refreshes both CRCs.
    pub fn set_entries_crc(&mut self, entries: &[u8]) {
        put_u32(&mut self.raw, OFF_ENTRIES_CRC, crc32fast::hash(entries));
        self.seal();
    }

    fn seal(&mut self) {
        let crc = self.computed_crc();
        put_u32(&mut self.raw, OFF_CRC, crc);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
}

// Entry field offsets (UEFI spec, table 5-6).
const E_TYPE: usize = 0;
const E_UNIQUE: usize = 16;
const E_FIRST: usize = 32;
const E_LAST: usize = 40;
const E_ATTRS: usize = 48;
const E_NAME: usize = 56;
const E_NAME_LEN: usize = 72;

/// A read-only view of one partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub type_guid: Uuid,
    pub unique_guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

fn guid_at(b: &[u8], off: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Uuid::from_bytes_le(a)
}

/// Decodes entry `i` of an entry array.
pub fn entry_at(entries: &[u8], entry_size: u32, i: u32) -> RawEntry {
    let off = i as usize * entry_size as usize;
    let e = &entries[off..off + ENTRY_MIN_SIZE as usize];
    let name_units: Vec<u16> = e[E_NAME..E_NAME + E_NAME_LEN]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    RawEntry {
        type_guid: guid_at(e, E_TYPE),
        unique_guid: guid_at(e, E_UNIQUE),
        first_lba: u64_at(e, E_FIRST),
        last_lba: u64_at(e, E_LAST),
        attributes: u64_at(e, E_ATTRS),
        name: String::from_utf16_lossy(&name_units),
    }
}

/// Overwrites the attribute word of entry `i`; nothing else in the array changes.
pub fn set_entry_attributes(entries: &mut [u8], entry_size: u32, i: u32, attributes: u64) {
    let off = i as usize * entry_size as usize + E_ATTRS;
    put_u64(entries, off, attributes);
}

/// Writes a whole entry `i` (used when creating a disk). Names longer than 36 UTF-16 units
/// are cut.
pub fn write_entry(entries: &mut [u8], entry_size: u32, i: u32, e: &RawEntry) {
    let off = i as usize * entry_size as usize;
    let slot = &mut entries[off..off + ENTRY_MIN_SIZE as usize];
    slot.fill(0);
    slot[E_TYPE..E_TYPE + 16].copy_from_slice(&e.type_guid.to_bytes_le());
    slot[E_UNIQUE..E_UNIQUE + 16].copy_from_slice(&e.unique_guid.to_bytes_le());
    put_u64(slot, E_FIRST, e.first_lba);
    put_u64(slot, E_LAST, e.last_lba);
    put_u64(slot, E_ATTRS, e.attributes);
    for (k, unit) in e.name.encode_utf16().take(E_NAME_LEN / 2).enumerate() {
        slot[E_NAME + 2 * k..E_NAME + 2 * k + 2].copy_from_slice(&unit.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_crc() {
        let guid = Uuid::new_v4();
        let mut h = Header::new(512, 1, 999, 34, 966, guid, 2, 128);
        let entries = vec![0u8; 128 * 128];
        h.set_entries_crc(&entries);
        let parsed = Header::parse(h.as_bytes(), 1, 512).expect("valid header");
        assert_eq!(parsed.disk_guid(), guid);
        assert_eq!(parsed.entries_lba(), 2);
        parsed.check_entries(&entries).expect("entries match");
        let mut flipped = h.as_bytes().to_vec();
        flipped[60] ^= 1;
        assert_eq!(Header::parse(&flipped, 1, 512), Err(HeaderProblem::BadCrc));
        assert!(matches!(
            Header::parse(h.as_bytes(), 2, 512),
            Err(HeaderProblem::WrongLocation { .. })
        ));
    }

    #[test]
    fn entry_round_trip_keeps_other_bytes() {
        let mut entries = vec![0xAAu8; 4 * 128];
        let e = RawEntry {
            type_guid: crate::types::USR_TYPE_GUID,
            unique_guid: Uuid::new_v4(),
            first_lba: 4096,
            last_lba: 8191,
            attributes: 1 << 56,
            name: "USR-A".into(),
        };
        write_entry(&mut entries, 128, 2, &e);
        assert_eq!(entry_at(&entries, 128, 2), e);
        set_entry_attributes(&mut entries, 128, 2, 7);
        assert_eq!(entry_at(&entries, 128, 2).attributes, 7);
        assert!(entries[..256].iter().all(|b| *b == 0xAA));
        assert!(entries[384..].iter().all(|b| *b == 0xAA));
    }
}
