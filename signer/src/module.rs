//! Recognising a kernel module: an ELF relocatable object with a `.modinfo` section.

use goblin::elf::header::{ET_CORE, ET_DYN, ET_EXEC, ET_NONE, ET_REL};
use goblin::elf::section_header::SHT_NOBITS;
use goblin::elf::{Elf, SectionHeader};
use goblin::strtab::Strtab;

use crate::error::NotModule;

/// What `.modinfo` says about a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `name=`: the module's name as `modprobe` knows it.
    pub name: String,
    /// `vermagic=`: the kernel release and build options it was built for.
    pub vermagic: String,
    /// Every `key=value` entry in order (`license`, `depends`, `alias`, …).
    pub fields: Vec<(String, String)>,
}

impl ModuleInfo {
    /// The kernel release the module was built against (the first word of `vermagic`).
    pub fn kernel_release(&self) -> &str {
        self.vermagic.split_whitespace().next().unwrap_or("")
    }

    /// The first value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Checks that `bytes` (with any signature already stripped) are a kernel module and reads `.modinfo`.
pub(crate) fn parse(bytes: &[u8]) -> Result<ModuleInfo, NotModule> {
    if bytes.is_empty() {
        return Err(NotModule::Empty);
    }
    if !bytes.starts_with(b"\x7fELF") {
        return Err(NotModule::NotElf(describe_magic(bytes)));
    }
    let header = Elf::parse_header(bytes).map_err(|e| NotModule::Truncated(format!("ELF header: {e}")))?;
    match header.e_type {
        ET_REL => {}
        ET_EXEC => return Err(NotModule::WrongType("executable (ET_EXEC)")),
        ET_DYN => return Err(NotModule::WrongType("shared object or PIE executable (ET_DYN)")),
        ET_CORE => return Err(NotModule::WrongType("core dump (ET_CORE)")),
        ET_NONE => return Err(NotModule::WrongType("file of no type (ET_NONE)")),
        _ => return Err(NotModule::WrongType("file of an OS- or processor-specific type")),
    }
    let container = header.container().map_err(|e| NotModule::Truncated(format!("ELF class: {e}")))?;
    let endian = header.endianness().map_err(|e| NotModule::Truncated(format!("ELF data encoding: {e}")))?;
    let ctx = goblin::container::Ctx::new(container, endian);
    let shoff = usize::try_from(header.e_shoff).map_err(|_| NotModule::Truncated("section header offset".into()))?;
    if shoff == 0 || header.e_shnum == 0 {
        return Err(NotModule::Truncated("no section headers".into()));
    }
    let sections = SectionHeader::parse(bytes, shoff, usize::from(header.e_shnum), ctx).map_err(|e| NotModule::Truncated(format!("section headers: {e}")))?;
    for (i, sh) in sections.iter().enumerate() {
        if sh.sh_type != SHT_NOBITS && sh.sh_offset.saturating_add(sh.sh_size) > bytes.len() as u64 {
            return Err(NotModule::Truncated(format!(
                "section {i} ends at byte {} but the file has {} bytes",
                sh.sh_offset.saturating_add(sh.sh_size),
                bytes.len()
            )));
        }
    }
    let names = sections
        .get(usize::from(header.e_shstrndx))
        .ok_or_else(|| NotModule::Truncated(format!("section-name table index {} is out of range", header.e_shstrndx)))?;
    let strtab =
        Strtab::parse(bytes, names.sh_offset as usize, names.sh_size as usize, 0).map_err(|e| NotModule::Truncated(format!("section-name table: {e}")))?;
    let modinfo = sections.iter().find(|sh| strtab.get_at(sh.sh_name) == Some(".modinfo")).ok_or(NotModule::NoModinfo)?;
    if modinfo.sh_type == SHT_NOBITS {
        return Err(NotModule::NoModinfo);
    }
    let start = modinfo.sh_offset as usize;
    let data = &bytes[start..start + modinfo.sh_size as usize];
    parse_modinfo(data)
}

/// Parses NUL-separated `key=value` strings.
fn parse_modinfo(data: &[u8]) -> Result<ModuleInfo, NotModule> {
    let fields: Vec<(String, String)> = data
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let find = |key: &'static str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).ok_or(NotModule::MissingField(key));
    Ok(ModuleInfo { name: find("name")?, vermagic: find("vermagic")?, fields })
}

/// A short human description of a non-ELF file's first bytes.
fn describe_magic(bytes: &[u8]) -> String {
    let known: [(&[u8], &str); 6] = [
        (b"\xfd7zXZ\x00", "xz-compressed data"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
        (b"\x1f\x8b", "gzip-compressed data"),
        (b"PK\x03\x04", "a zip archive"),
        (b"#!", "a script"),
        (b"-----BEGIN", "PEM text"),
    ];
    if let Some((_, what)) = known.iter().find(|(m, _)| bytes.starts_with(m)) {
        return (*what).to_string();
    }
    let head: String = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    format!("bytes {head}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_needs_name_and_vermagic() {
        let info = parse_modinfo(b"license=GPL\0\0name=hello\0vermagic=6.1.0-56-amd64 SMP preempt \0").expect("ok");
        assert_eq!(info.name, "hello");
        assert_eq!(info.kernel_release(), "6.1.0-56-amd64");
        assert_eq!(info.get("license"), Some("GPL"));
        assert_eq!(parse_modinfo(b"license=GPL\0vermagic=x\0"), Err(NotModule::MissingField("name")));
        assert_eq!(parse_modinfo(b"name=a\0"), Err(NotModule::MissingField("vermagic")));
    }

    #[test]
    fn non_elf_inputs_are_described() {
        assert_eq!(parse(b""), Err(NotModule::Empty));
        assert_eq!(parse(b"\xfd7zXZ\x00rest"), Err(NotModule::NotElf("xz-compressed data".into())));
        assert_eq!(parse(&[1, 2, 3, 4, 5]), Err(NotModule::NotElf("bytes 01 02 03 04".into())));
        assert!(matches!(parse(b"\x7fELF\x02\x01"), Err(NotModule::Truncated(_))));
    }
}
