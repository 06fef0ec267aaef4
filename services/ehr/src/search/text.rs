//! String matching keys: case- and accent-insensitive, as R4 string search requires. The
//! Vietnamese letters fold to their base: "Nguyễn" → "nguyen", "Đường" → "duong".

use unicode_normalization::UnicodeNormalization;

/// The folded form of `text`: decomposed, combining marks dropped, đ → d, lower-cased, runs
/// of whitespace made one space.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.nfd() {
        if ('\u{300}'..='\u{36f}').contains(&c) {
            continue;
        }
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        match c {
            'đ' | 'Đ' => out.push('d'),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn vietnamese_letters_fold_to_their_base() {
        assert_eq!(fold("Nguyễn"), "nguyen");
        assert_eq!(fold("Đường"), "duong");
        assert_eq!(fold("  Trần   Thị  Hoà "), "tran thi hoa");
        assert_eq!(fold("ĐẶNG"), "dang");
        assert_eq!(fold("Ơ Đu"), "o du");
        assert_eq!(fold("Müller"), "muller");
    }
}
