//! Bounding and aligning text that reaches the API server or a terminal.

/// The mark a cut text ends with.
const MARK: char = '…';

/// Cuts `text` to at most `max` bytes, the mark included, on a character boundary: every
/// limit it serves (Event notes, admission warnings, echoed values) is in bytes or
/// characters, and bytes bound both.
pub fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(MARK.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push(MARK);
}

/// [`cut`], on a copy.
pub fn cut_to(text: &str, max: usize) -> String {
    let mut text = text.to_owned();
    cut(&mut text, max);
    text
}

/// Rows as lines of left-aligned columns two spaces apart, each line's trailing space
/// trimmed (the tables of `status` and `plan`).
pub fn columns(rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary_within_the_limit() {
        assert_eq!(cut_to("short", 10), "short");
        assert_eq!(cut_to("abcdefghij", 6), "abc…");
        let cut = cut_to(&"é".repeat(100), 10);
        assert!(cut.len() <= 10 && cut.ends_with('…'), "{cut}");
        assert_eq!(cut_to("abc", 0), "…");
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["NAME".to_owned(), "STATE".to_owned(), "X".to_owned()],
            vec!["shop-é".to_owned(), "ok".to_owned(), String::new()],
        ];
        assert_eq!(columns(&rows), ["NAME    STATE  X", "shop-é  ok"]);
    }
}
