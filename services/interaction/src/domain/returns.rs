//! Returns: which order lines a return takes its units from, so the refund
//! is computed exactly from the prices and costs of the order, and a sku is
//! never returned more often than it was bought.

use std::fmt;

use super::{Line, Totals, totals};

/// One line of an order and how much of it earlier returns took back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returnable {
    /// Position of the line in the order.
    pub line_no: i32,
    /// Stock-keeping unit.
    pub sku: String,
    /// Product category.
    pub category: String,
    /// Quantity bought and unit price and cost.
    pub line: Line,
    /// Units of this line already returned.
    pub returned: i64,
}

/// Units of one order line taken back by a return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Position of the line in the order.
    pub line_no: i32,
    /// Stock-keeping unit.
    pub sku: String,
    /// Product category.
    pub category: String,
    /// Units taken back now, at the line's unit price and cost.
    pub line: Line,
}

/// A return asks for more of a sku than is left to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverReturn {
    /// The sku.
    pub sku: String,
    /// Units bought in the order (0: not in the order).
    pub bought: i64,
    /// Units already returned.
    pub already_returned: i64,
    /// Units asked back now.
    pub requested: i64,
}

impl fmt::Display for OverReturn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bought == 0 {
            write!(f, "sku {} is not in the order", self.sku)
        } else {
            write!(
                f,
                "sku {}: {} bought, {} already returned, cannot return {} more",
                self.sku, self.bought, self.already_returned, self.requested
            )
        }
    }
}

/// Take `requested` (sku, quantity) back from `order`: each sku from its
/// lines in order, first what earlier returns left on the first line, so
/// the same units are never refunded twice at different prices.
pub fn allocate(order: &[Returnable], requested: &[(String, i64)]) -> Result<Vec<Taken>, OverReturn> {
    let mut left: Vec<i64> = order.iter().map(|l| (l.line.quantity - l.returned).max(0)).collect();
    let mut taken = Vec::new();
    for (sku, quantity) in requested {
        let lines: Vec<usize> = (0..order.len()).filter(|&i| order[i].sku == *sku).collect();
        let available: i64 = lines.iter().map(|&i| left[i]).sum();
        if *quantity > available {
            return Err(OverReturn {
                sku: sku.clone(),
                bought: lines.iter().map(|&i| order[i].line.quantity).sum(),
                already_returned: lines.iter().map(|&i| order[i].line.quantity - left[i]).sum(),
                requested: *quantity,
            });
        }
        let mut wanted = *quantity;
        for i in lines {
            if wanted == 0 {
                break;
            }
            let n = wanted.min(left[i]);
            if n == 0 {
                continue;
            }
            left[i] -= n;
            wanted -= n;
            let l = &order[i];
            taken.push(Taken {
                line_no: l.line_no,
                sku: l.sku.clone(),
                category: l.category.clone(),
                line: Line { quantity: n, ..l.line },
            });
        }
    }
    Ok(taken)
}

/// Revenue refunded and cost taken back by `taken` (margin reversed =
/// revenue − cost); `None` on overflow, which a valid order cannot reach.
pub fn refund(taken: &[Taken]) -> Option<Totals> {
    totals(&taken.iter().map(|t| t.line).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(line_no: i32, sku: &str, quantity: i64, unit_price: i64, unit_cost: i64, returned: i64) -> Returnable {
        Returnable {
            line_no,
            sku: sku.into(),
            category: "c".into(),
            line: Line { quantity, unit_price, unit_cost },
            returned,
        }
    }

    fn ask(items: &[(&str, i64)]) -> Vec<(String, i64)> {
        items.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect()
    }

    #[test]
    fn refunds_exactly_at_the_order_prices() {
        let order = [line(0, "TENT", 2, 19_999, 12_000, 0), line(1, "PEG", 10, 50, 10, 0)];
        let taken = allocate(&order, &ask(&[("TENT", 1), ("PEG", 4)])).unwrap();
        let t = refund(&taken).unwrap();
        assert_eq!(t, Totals { revenue: 19_999 + 200, cost: 12_000 + 40 });
        assert_eq!(t.margin(), 7_999 + 160);
    }

    #[test]
    fn a_sku_on_several_lines_is_taken_line_by_line_after_earlier_returns() {
        let order = [line(0, "X", 2, 100, 60, 1), line(1, "Y", 1, 5, 1, 0), line(2, "X", 3, 80, 60, 0)];
        let taken = allocate(&order, &ask(&[("X", 3)])).unwrap();
        assert_eq!(taken.len(), 2);
        assert_eq!((taken[0].line_no, taken[0].line.quantity, taken[0].line.unit_price), (0, 1, 100));
        assert_eq!((taken[1].line_no, taken[1].line.quantity, taken[1].line.unit_price), (2, 2, 80));
        assert_eq!(refund(&taken).unwrap(), Totals { revenue: 260, cost: 180 });
    }

    #[test]
    fn cannot_return_more_than_is_left() {
        let order = [line(0, "X", 2, 100, 60, 1), line(1, "X", 3, 80, 60, 2)];
        assert!(allocate(&order, &ask(&[("X", 2)])).is_ok());
        let err = allocate(&order, &ask(&[("X", 3)])).unwrap_err();
        assert_eq!(err, OverReturn { sku: "X".into(), bought: 5, already_returned: 3, requested: 3 });
        assert!(err.to_string().contains("sku X"));
    }

    #[test]
    fn unknown_skus_cannot_be_returned() {
        let order = [line(0, "X", 2, 100, 60, 0)];
        let err = allocate(&order, &ask(&[("Z", 1)])).unwrap_err();
        assert_eq!(err.bought, 0);
        assert_eq!(err.to_string(), "sku Z is not in the order");
    }

    #[test]
    fn a_fully_returned_order_has_nothing_left() {
        let order = [line(0, "X", 2, 100, 60, 0)];
        let first = allocate(&order, &ask(&[("X", 2)])).unwrap();
        assert_eq!(first.len(), 1);
        let after = [line(0, "X", 2, 100, 60, 2)];
        assert!(allocate(&after, &ask(&[("X", 1)])).is_err());
    }
}
