//! A zip archive of stored (uncompressed) entries, as Python runs it (`python3 step.pyz`
//! runs its `__main__.py`; zipimport imports its packages): the same bytes for the same
//! entries, whenever and wherever it is made. Entries keep the order given, every one
//! carries the same timestamp (1980-01-01 00:00, the earliest a zip can hold) and mode
//! 0644, and the archive has no comment and no extra fields.

/// DOS date of 1980-01-01 (day 1, month 1, year 0 counted from 1980); its time is 00:00:00.
const DOS_DATE: u16 = (1 << 5) | 1;
const DOS_TIME: u16 = 0;
/// Version 2.0, the first that knows stored entries in directories.
const VERSION: u16 = 20;
/// Made by Unix (3), so that the external attributes are a file mode.
const MADE_BY: u16 = (3 << 8) | VERSION;
/// A regular file, rw-r--r--.
const FILE_MODE: u32 = 0o100_644 << 16;

/// The IEEE CRC-32 of `data`, as zip stores it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A size or offset as a zip field holds it. The archive holds the step's sources, far
/// below the 4 GiB a zip without its 64-bit extension can hold.
fn field32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn field16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The archive of `entries`, `(path, content)` pairs in the order they are given.
pub fn stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = field32(out.len());
        let crc = crc32(data);
        let size = field32(data.len());
        let name_len = field16(name.len());
        // Local file header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&DOS_TIME.to_le_bytes());
        out.extend_from_slice(&DOS_DATE.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes()); // compressed
        out.extend_from_slice(&size.to_le_bytes()); // uncompressed
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra field
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Its central directory header.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&MADE_BY.to_le_bytes());
        central.extend_from_slice(&VERSION.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // flags
        central.extend_from_slice(&0u16.to_le_bytes()); // stored
        central.extend_from_slice(&DOS_TIME.to_le_bytes());
        central.extend_from_slice(&DOS_DATE.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // extra field
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&FILE_MODE.to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = field32(out.len());
    let count = field16(entries.len());
    out.extend_from_slice(&central);
    // End of central directory record.
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // this disk
    out.extend_from_slice(&0u16.to_le_bytes()); // the central directory's disk
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&field32(central.len()).to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> usize {
        usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The check value of the CRC-32 every zip reader uses.
    #[test]
    fn crc32_is_the_zip_checksum() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// A reader that follows the end record to the central directory and from each of its
    /// headers to the entry finds every entry back, in order, with its checksum.
    #[test]
    fn the_central_directory_leads_to_every_entry() {
        let entries: [(&str, &[u8]); 3] = [
            ("__main__.py", b"print('hi')\n"),
            ("pkg/__init__.py", b""),
            ("pkg/mod.py", b"X = 1\n"),
        ];
        let zip = stored(&entries);
        assert_eq!(
            zip,
            stored(&entries),
            "the same entries give the same bytes"
        );
        let end = zip.len() - 22;
        assert_eq!(u32_at(&zip, end), 0x0605_4b50);
        assert_eq!(u16_at(&zip, end + 10), entries.len());
        let mut at = u32_at(&zip, end + 16) as usize;
        assert_eq!(at + u32_at(&zip, end + 12) as usize, end);
        for (name, data) in entries {
            assert_eq!(u32_at(&zip, at), 0x0201_4b50);
            let name_len = u16_at(&zip, at + 28);
            assert_eq!(&zip[at + 46..at + 46 + name_len], name.as_bytes());
            assert_eq!(u32_at(&zip, at + 38) >> 16, 0o100_644);
            let local = u32_at(&zip, at + 42) as usize;
            assert_eq!(u32_at(&zip, local), 0x0403_4b50);
            assert_eq!(u32_at(&zip, local + 14), crc32(data));
            assert_eq!(u32_at(&zip, local + 18) as usize, data.len());
            let start = local + 30 + u16_at(&zip, local + 26) + u16_at(&zip, local + 28);
            assert_eq!(&zip[start..start + data.len()], data);
            at += 46 + name_len;
        }
        assert_eq!(at, end);
    }
}
