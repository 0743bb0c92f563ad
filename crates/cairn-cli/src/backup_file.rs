//! The metadata backup file written by `cairn meta backup` and read by `cairn meta restore`.
//!
//! Format version 1, integers little-endian:
//! - magic line `CAIRN-META-BACKUP\n` (18 bytes);
//! - u32 format version, u64 store revision of the copy, u64 Raft index applied to it, u64 key
//!   count;
//! - one record per key, in key order: u32 key length, key, u32 value length, value, u64 create
//!   revision, u64 mod revision (the revisions the key had in the group backed up);
//! - blake3 (32 bytes) of every byte before it.
//!
//! The key count is known only once the stream ended, so the writer fills it in last and then
//! hashes the finished file; the reader checks the magic and the version, then reads the whole
//! file once (checksum, record lengths, key order, count) before anything is restored.

use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// Magic line at the start of every backup.
pub const MAGIC: &[u8; 18] = b"CAIRN-META-BACKUP\n";
/// Format version written by this build (and the only one it reads).
pub const VERSION: u32 = 1;
const HEADER_LEN: u64 = MAGIC.len() as u64 + 4 + 8 + 8 + 8;
const HASH_LEN: u64 = 32;
/// Fixed bytes of a record besides its key and value.
const RECORD_OVERHEAD: u64 = 4 + 4 + 8 + 8;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Store revision of the copy.
    pub revision: u64,
    /// Raft log index applied to the copy.
    pub applied_index: u64,
    /// Records in the file.
    pub keys: u64,
}

/// One key as backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
    /// Revision that created it in the group backed up.
    pub create_revision: u64,
    /// Revision of its last change there.
    pub mod_revision: u64,
}

/// Why a file is not a usable backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupFileError {
    /// It does not start with the magic line.
    #[error("not a cairn metadata backup (it does not start with the CAIRN-META-BACKUP line)")]
    NotABackup,
    /// Written by another format version.
    #[error("backup format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    /// Too short to hold a header and a checksum.
    #[error("backup is truncated ({0} bytes)")]
    Truncated(u64),
    /// The checksum does not match the contents.
    #[error("checksum mismatch: the backup is damaged or truncated")]
    Checksum,
    /// The checksum matches but the records do not add up (written by a broken build).
    #[error("backup is malformed: {0}")]
    Malformed(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn encode_header(h: &Header) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN as usize);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&h.revision.to_le_bytes());
    b.extend_from_slice(&h.applied_index.to_le_bytes());
    b.extend_from_slice(&h.keys.to_le_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads and checks the header (magic and version).
fn read_header(r: &mut impl Read) -> Result<Header, BackupFileError> {
    let mut b = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut b)?;
    if &b[..MAGIC.len()] != MAGIC {
        return Err(BackupFileError::NotABackup);
    }
    let at = MAGIC.len();
    let version = u32_at(&b, at);
    if version != VERSION {
        return Err(BackupFileError::Version(version));
    }
    Ok(Header { revision: u64_at(&b, at + 4), applied_index: u64_at(&b, at + 12), keys: u64_at(&b, at + 20) })
}

/// Reads one record of at most `room` bytes (so a damaged length never makes us allocate more
/// than the file holds).
fn read_record(r: &mut impl Read, room: u64) -> Result<Record, BackupFileError> {
    let short = || BackupFileError::Malformed("a record runs past the end of the file".into());
    let mut len = [0u8; 4];
    let mut field = |r: &mut dyn Read, used: &mut u64| -> Result<Vec<u8>, BackupFileError> {
        r.read_exact(&mut len)?;
        let n = u64::from(u32::from_le_bytes(len));
        *used += n;
        if *used + RECORD_OVERHEAD > room {
            return Err(short());
        }
        let mut v = vec![0u8; n as usize];
        r.read_exact(&mut v)?;
        Ok(v)
    };
    let mut used = 0;
    let key = field(r, &mut used)?;
    let value = field(r, &mut used)?;
    let mut revs = [0u8; 16];
    r.read_exact(&mut revs)?;
    Ok(Record { key, value, create_revision: u64_at(&revs, 0), mod_revision: u64_at(&revs, 8) })
}

/// Writes a backup: a header whose key count is filled in by [`finish`](Self::finish), then the
/// records as they arrive.
pub struct BackupWriter<F: Read + Write + Seek> {
    out: BufWriter<F>,
    header: Header,
    body: u64,
    last_key: Option<Vec<u8>>,
}

impl<F: Read + Write + Seek> BackupWriter<F> {
    /// Starts a backup of the copy at `revision` into `f` (empty, positioned at its start).
    pub fn new(f: F, revision: u64, applied_index: u64) -> Result<Self, BackupFileError> {
        let header = Header { revision, applied_index, keys: 0 };
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&encode_header(&header))?;
        Ok(BackupWriter { out, header, body: HEADER_LEN, last_key: None })
    }

    /// Appends one key; keys must come in strictly increasing order.
    pub fn push(&mut self, key: &[u8], value: &[u8], create_revision: u64, mod_revision: u64) -> io::Result<()> {
        if self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(io::Error::other("backup keys arrived out of order"));
        }
        let (kl, vl) = (u32::try_from(key.len()), u32::try_from(value.len()));
        let (Ok(kl), Ok(vl)) = (kl, vl) else { return Err(io::Error::other("key or value longer than 4 GiB")) };
        self.out.write_all(&kl.to_le_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&vl.to_le_bytes())?;
        self.out.write_all(value)?;
        self.out.write_all(&create_revision.to_le_bytes())?;
        self.out.write_all(&mod_revision.to_le_bytes())?;
        self.body += RECORD_OVERHEAD + key.len() as u64 + value.len() as u64;
        self.header.keys += 1;
        self.last_key = Some(key.to_vec());
        Ok(())
    }

    /// Fills in the key count, appends the checksum; returns the file (not yet synced), its
    /// header and its length.
    pub fn finish(self) -> Result<(F, Header, u64), BackupFileError> {
        let mut f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&encode_header(&self.header))?;
        f.seek(SeekFrom::Start(0))?;
        let mut hasher = blake3::Hasher::new();
        let hashed = io::copy(&mut BufReader::with_capacity(1 << 20, (&mut f).take(self.body)), &mut hasher)?;
        if hashed != self.body {
            return Err(BackupFileError::Io(io::Error::other("backup file shorter than what was written")));
        }
        f.seek(SeekFrom::Start(self.body))?;
        f.write_all(hasher.finalize().as_bytes())?;
        f.flush()?;
        Ok((f, self.header, self.body + HASH_LEN))
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Checks a whole backup of `len` bytes read from `r`: magic and version first, then in one
/// pass the checksum and every record (lengths, strictly increasing keys, the count the header
/// gives, nothing after the last). A damaged file is reported as a checksum mismatch even when
/// the damage also garbles a record.
pub fn verify(r: impl Read, len: u64) -> Result<Header, BackupFileError> {
    let mut r = BufReader::with_capacity(1 << 20, r);
    if len < HEADER_LEN + HASH_LEN {
        let mut start = Vec::new();
        r.by_ref().take(MAGIC.len() as u64).read_to_end(&mut start)?;
        return Err(if MAGIC.starts_with(&start) {
            BackupFileError::Truncated(len)
        } else {
            BackupFileError::NotABackup
        });
    }
    let body = len - HASH_LEN;
    let mut h = Hashing { inner: r.by_ref().take(body), hasher: blake3::Hasher::new() };
    let header = read_header(&mut h)?;
    let parsed = check_records(&mut h, &header, body - HEADER_LEN);
    // Hash whatever the parse left unread, then compare.
    io::copy(&mut h, &mut io::sink())?;
    let sum = h.hasher.finalize();
    let mut stored = [0u8; HASH_LEN as usize];
    r.read_exact(&mut stored)?;
    if sum.as_bytes() != &stored {
        return Err(BackupFileError::Checksum);
    }
    parsed.map(|()| header)
}

fn check_records(r: &mut impl Read, header: &Header, mut room: u64) -> Result<(), BackupFileError> {
    let mut last: Option<Vec<u8>> = None;
    for i in 0..header.keys {
        let rec = match read_record(r, room) {
            Err(BackupFileError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(BackupFileError::Malformed(format!("the file ends after {i} of {} keys", header.keys)));
            }
            other => other?,
        };
        room -= RECORD_OVERHEAD + rec.key.len() as u64 + rec.value.len() as u64;
        if rec.key.is_empty() {
            return Err(BackupFileError::Malformed(format!("key {i} is empty")));
        }
        if last.as_ref().is_some_and(|l| *l >= rec.key) {
            return Err(BackupFileError::Malformed(format!("key {i} is out of order")));
        }
        last = Some(rec.key);
    }
    if room != 0 {
        return Err(BackupFileError::Malformed(format!("{room} bytes follow the last of {} keys", header.keys)));
    }
    Ok(())
}

/// Reads the records of a backup [`verify`] accepted, in order.
pub struct Records<R: Read> {
    r: BufReader<R>,
    left: u64,
    room: u64,
}

impl<R: Read> Records<R> {
    /// Reads the header of the backup of `len` bytes in `r`; the records follow.
    pub fn open(r: R, len: u64) -> Result<(Header, Self), BackupFileError> {
        let mut r = BufReader::with_capacity(1 << 20, r);
        let header = read_header(&mut r)?;
        let room = len.saturating_sub(HEADER_LEN + HASH_LEN);
        Ok((header, Records { r, left: header.keys, room }))
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = Result<Record, BackupFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let rec = read_record(&mut self.r, self.room);
        if let Ok(r) = &rec {
            self.room -= RECORD_OVERHEAD + r.key.len() as u64 + r.value.len() as u64;
        } else {
            self.left = 0;
        }
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn sample() -> Vec<Record> {
        (0..300u32)
            .map(|i| Record {
                key: format!("k/{i:04}").into_bytes(),
                // Binary values of many lengths, including empty.
                value: (0..(i * 7 % 500)).map(|b| (b * 31 + i) as u8).collect(),
                create_revision: u64::from(i) + 1,
                mod_revision: u64::from(i) * 3 + 1,
            })
            .collect()
    }

    fn write(records: &[Record]) -> Vec<u8> {
        let mut w = BackupWriter::new(Cursor::new(Vec::new()), 4242, 77).unwrap();
        for r in records {
            w.push(&r.key, &r.value, r.create_revision, r.mod_revision).unwrap();
        }
        let (f, header, len) = w.finish().unwrap();
        assert_eq!(header, Header { revision: 4242, applied_index: 77, keys: records.len() as u64 });
        let bytes = f.into_inner();
        assert_eq!(bytes.len() as u64, len);
        bytes
    }

    fn verify_bytes(b: &[u8]) -> Result<Header, BackupFileError> {
        verify(Cursor::new(b), b.len() as u64)
    }

    #[test]
    fn round_trip() {
        let records = sample();
        let bytes = write(&records);
        assert!(bytes.starts_with(MAGIC));
        let expected = Header { revision: 4242, applied_index: 77, keys: 300 };
        assert_eq!(verify_bytes(&bytes).unwrap(), expected);
        // The checksum is plain blake3 of everything before it (`head -c -32 | b3sum` agrees).
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        assert_eq!(blake3::hash(body).as_bytes(), sum);
        let (header, recs) = Records::open(Cursor::new(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(header, expected);
        assert_eq!(recs.collect::<Result<Vec<_>, _>>().unwrap(), records);
        // An empty keyspace is a valid backup too.
        let empty = write(&[]);
        assert_eq!(verify_bytes(&empty).unwrap().keys, 0);
        assert_eq!(Records::open(Cursor::new(&empty), empty.len() as u64).unwrap().1.count(), 0);
    }

    #[test]
    fn any_corrupted_byte_is_detected() {
        let bytes = write(&sample());
        // Past the magic and version (which have their own messages): a revision byte, a key
        // length, key and value bytes, a revision of a record, the checksum itself.
        let header_end = HEADER_LEN as usize;
        for at in [MAGIC.len() + 5, header_end, header_end + 5, bytes.len() / 2, bytes.len() - 40, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            assert!(matches!(verify_bytes(&bad), Err(BackupFileError::Checksum)), "flip at {at} not detected");
        }
        // A key length turned huge must not make the reader allocate it.
        let mut bad = bytes.clone();
        bad[header_end + 3] = 0xff;
        assert!(matches!(verify_bytes(&bad), Err(BackupFileError::Checksum)));
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let bytes = write(&sample());
        for len in [bytes.len() - 1, bytes.len() - 32, bytes.len() / 2, HEADER_LEN as usize + 32] {
            assert!(matches!(verify_bytes(&bytes[..len]), Err(BackupFileError::Checksum)), "cut at {len}");
        }
        assert!(matches!(verify_bytes(&bytes[..40]), Err(BackupFileError::Truncated(40))));
        assert!(matches!(verify_bytes(b""), Err(BackupFileError::Truncated(0))));
        let mut junk = vec![b'x'; 200];
        assert!(matches!(verify_bytes(&junk), Err(BackupFileError::NotABackup)));
        junk.truncate(3);
        assert!(matches!(verify_bytes(&junk), Err(BackupFileError::NotABackup)));
    }

    #[test]
    fn another_version_is_refused_before_the_checksum() {
        let mut bytes = write(&sample());
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&2u32.to_le_bytes());
        let err = verify_bytes(&bytes).unwrap_err();
        assert!(matches!(err, BackupFileError::Version(2)), "{err:?}");
        assert_eq!(err.to_string(), "backup format version 2 is not supported (this build reads version 1)");
        assert!(matches!(Records::open(Cursor::new(&bytes), bytes.len() as u64), Err(BackupFileError::Version(2))));
    }

    #[test]
    fn a_well_hashed_file_with_bad_records_is_malformed() {
        // Right checksum, wrong count: as a broken writer would produce.
        let mut bytes = write(&sample());
        bytes.truncate(bytes.len() - 32);
        let at = MAGIC.len() + 20;
        bytes[at..at + 8].copy_from_slice(&301u64.to_le_bytes());
        let sum = *blake3::hash(&bytes).as_bytes();
        bytes.extend_from_slice(&sum);
        let err = verify_bytes(&bytes).unwrap_err();
        assert!(matches!(&err, BackupFileError::Malformed(m) if m.contains("after 300 of 301")), "{err:?}");
        // Keys out of order are refused by the writer.
        let mut w = BackupWriter::new(Cursor::new(Vec::new()), 1, 1).unwrap();
        w.push(b"b", b"", 1, 1).unwrap();
        assert!(w.push(b"a", b"", 1, 1).is_err());
        assert!(w.push(b"b", b"", 1, 1).is_err());
    }
}
