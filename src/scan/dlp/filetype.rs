//! File type detection from magic bytes (never from the declared type or name).

/// A detected file type. `name()` is what `filetype` rules compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Pdf,
    Zip,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
    SevenZip,
    Rar,
    Tar,
    Cab,
    /// Windows PE / DOS executable (`MZ`).
    Pe,
    Elf,
    MachO,
    /// OLE2 compound file: legacy Office (doc, xls, ppt), msi.
    Ole,
    Rtf,
    Png,
    Jpeg,
    Gif,
    Bmp,
    Tiff,
    Webp,
    Iso,
}

/// Every name a `filetype` rule may use. `exe` matches `pe`, `elf` and `macho`;
/// `office` matches `ole` (legacy Office; OOXML files are `zip`).
pub const FILETYPE_NAMES: &[&str] = &[
    "pdf", "zip", "gzip", "bzip2", "xz", "zstd", "7z", "rar", "tar", "cab", "exe", "pe", "elf",
    "macho", "ole", "office", "rtf", "png", "jpeg", "gif", "bmp", "tiff", "webp", "iso", "archive",
    "image",
];

impl FileType {
    pub fn name(self) -> &'static str {
        match self {
            FileType::Pdf => "pdf",
            FileType::Zip => "zip",
            FileType::Gzip => "gzip",
            FileType::Bzip2 => "bzip2",
            FileType::Xz => "xz",
            FileType::Zstd => "zstd",
            FileType::SevenZip => "7z",
            FileType::Rar => "rar",
            FileType::Tar => "tar",
            FileType::Cab => "cab",
            FileType::Pe => "pe",
            FileType::Elf => "elf",
            FileType::MachO => "macho",
            FileType::Ole => "ole",
            FileType::Rtf => "rtf",
            FileType::Png => "png",
            FileType::Jpeg => "jpeg",
            FileType::Gif => "gif",
            FileType::Bmp => "bmp",
            FileType::Tiff => "tiff",
            FileType::Webp => "webp",
            FileType::Iso => "iso",
        }
    }

    /// Whether a `filetype` rule pattern (a name from [`FILETYPE_NAMES`],
    /// lowercase) matches this type, umbrella names included.
    pub fn matches(self, pattern: &str) -> bool {
        if pattern == self.name() {
            return true;
        }
        match pattern {
            "exe" => matches!(self, FileType::Pe | FileType::Elf | FileType::MachO),
            "office" => self == FileType::Ole,
            "archive" => matches!(
                self,
                FileType::Zip
                    | FileType::Gzip
                    | FileType::Bzip2
                    | FileType::Xz
                    | FileType::Zstd
                    | FileType::SevenZip
                    | FileType::Rar
                    | FileType::Tar
                    | FileType::Cab
            ),
            "image" => matches!(
                self,
                FileType::Png
                    | FileType::Jpeg
                    | FileType::Gif
                    | FileType::Bmp
                    | FileType::Tiff
                    | FileType::Webp
            ),
            _ => false,
        }
    }

    /// Types whose content is not text, so `content` rules skip them.
    pub fn is_binary(self) -> bool {
        !matches!(self, FileType::Rtf)
    }
}

/// Detect the type of `data` from its leading bytes.
pub fn detect(data: &[u8]) -> Option<FileType> {
    let starts = |m: &[u8]| data.starts_with(m);
    let t = if starts(b"%PDF-") {
        FileType::Pdf
    } else if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") || starts(b"PK\x07\x08") {
        FileType::Zip
    } else if starts(b"\x1f\x8b") {
        FileType::Gzip
    } else if starts(b"BZh") && data.len() > 3 && data[3].is_ascii_digit() {
        FileType::Bzip2
    } else if starts(b"\xfd7zXZ\x00") {
        FileType::Xz
    } else if starts(b"\x28\xb5\x2f\xfd") {
        FileType::Zstd
    } else if starts(b"7z\xbc\xaf\x27\x1c") {
        FileType::SevenZip
    } else if starts(b"Rar!\x1a\x07") {
        FileType::Rar
    } else if starts(b"MSCF\x00\x00\x00\x00") {
        FileType::Cab
    } else if starts(b"MZ") && data[..data.len().min(64)].contains(&0) {
        // DOS/PE headers are full of NUL bytes; text starting "MZ" is not.
        FileType::Pe
    } else if starts(b"\x7fELF") {
        FileType::Elf
    } else if starts(b"\xfe\xed\xfa\xce")
        || starts(b"\xfe\xed\xfa\xcf")
        || starts(b"\xce\xfa\xed\xfe")
        || starts(b"\xcf\xfa\xed\xfe")
        || (starts(b"\xca\xfe\xba\xbe")
            && data.len() >= 8
            && data[4..7] == [0, 0, 0]
            && data[7] < 20)
    {
        // The last form is a universal (fat) binary; a small arch count tells
        // it apart from a Java class file (same magic, then a version).
        FileType::MachO
    } else if starts(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1") {
        FileType::Ole
    } else if starts(b"{\\rtf") {
        FileType::Rtf
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        FileType::Png
    } else if starts(b"\xff\xd8\xff") {
        FileType::Jpeg
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        FileType::Gif
    } else if starts(b"BM") && data.len() >= 14 && data[6..10] == [0, 0, 0, 0] {
        FileType::Bmp
    } else if starts(b"II*\x00") || starts(b"MM\x00*") {
        FileType::Tiff
    } else if starts(b"RIFF") && data.len() >= 12 && &data[8..12] == b"WEBP" {
        FileType::Webp
    } else if data.len() >= 262 && &data[257..262] == b"ustar" {
        FileType::Tar
    } else if data.len() >= 0x8006 && &data[0x8001..0x8006] == b"CD001" {
        FileType::Iso
    } else {
        return None;
    };
    Some(t)
}

/// Whether an item looks like text, so `content` rules read it: no detected
/// binary type and no NUL byte in the first 4 KiB.
pub fn looks_like_text(data: &[u8], detected: Option<FileType>) -> bool {
    if detected.is_some_and(FileType::is_binary) {
        return false;
    }
    !data[..data.len().min(4096)].contains(&0)
}
