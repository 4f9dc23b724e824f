//! Booting Debian's kernel by PVH: the uncompressed ELF inside its LZ4
//! bzImage, taken out at image build. QEMU boots an ELF with a PVH note
//! directly — no real-mode setup and no decompression under TCG (about
//! 0.75 s of every boot here).

/// The uncompressed ELF kernel inside an LZ4-compressed bzImage (the kernel
/// uses LZ4's legacy frame: a magic, then blocks of up to 8 MiB, each after
/// its little-endian length); `None` if there is none or it is not whole.
pub fn elf_from_bzimage(bz: &[u8]) -> Option<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
    const BLOCK: usize = 8 << 20;
    let start = bz.windows(4).position(|w| w == MAGIC)? + 4;
    let mut at = start;
    let mut out = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    // The stream ends where what follows is no longer a block (the kernel appends its size).
    while let Some(len) = bz.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) {
        let Some(block) = bz.get(at + 4..at + 4 + len) else { break };
        let Ok(n) = lz4_flex::block::decompress_into(block, &mut buf) else { break };
        out.extend_from_slice(&buf[..n]);
        at += 4 + len;
    }
    whole_elf64(&out).then_some(out)
}

/// An x86-64 ELF whose section headers (the last thing in the file) are all there.
fn whole_elf64(b: &[u8]) -> bool {
    let u = |at: usize, n: usize| b.get(at..at + n).map(|s| s.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)));
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u(0x28, 8), u(0x3a, 2), u(0x3c, 2)) else { return false };
    b.starts_with(b"\x7fELF\x02\x01") && u(0x12, 2) == Some(0x3e) && shoff + shentsize * shnum <= b.len() as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A fake x86-64 ELF of `len` bytes whose section headers end the file.
    fn elf(len: usize) -> Vec<u8> {
        let mut e: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes());
        e[0x28..0x30].copy_from_slice(&((len - 64 * 4) as u64).to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        e[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        e
    }

    fn bzimage(elf: &[u8], blocks: usize) -> Vec<u8> {
        let mut bz = b"setup code and decompressor".to_vec();
        bz.extend([0x02, 0x21, 0x4c, 0x18]);
        for chunk in elf.chunks(8 << 20).take(blocks) {
            let c = lz4_flex::block::compress(chunk);
            bz.extend((c.len() as u32).to_le_bytes());
            bz.extend(c);
        }
        bz.extend((elf.len() as u32).to_le_bytes());
        bz.extend(b"trailer");
        bz
    }

    #[test]
    fn the_elf_kernel_comes_out_of_an_lz4_bzimage_whole_or_not_at_all() {
        let e = elf((8 << 20) + 12345);
        assert_eq!(elf_from_bzimage(&bzimage(&e, 2)).as_deref(), Some(&e[..]));
        // Its last block missing: not whole, so the bzImage is booted instead.
        assert_eq!(elf_from_bzimage(&bzimage(&e, 1)), None);
        assert_eq!(elf_from_bzimage(b"no lz4 payload here"), None);
    }
}
