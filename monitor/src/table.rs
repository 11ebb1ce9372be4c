//! Aligned text tables for the CLI.

use std::fmt::Write as _;

/// Rows as aligned columns; the last column is free.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_is_free() {
        let rows = vec![
            vec!["FD".to_string(), "KIND".to_string(), "TARGET".to_string()],
            vec![
                "12345".to_string(),
                "file".to_string(),
                "/a long path".to_string(),
            ],
        ];
        assert_eq!(table(&rows), "FD     KIND  TARGET\n12345  file  /a long path\n");
    }
}
