//! Pure interaction logic, no I/O: exact order arithmetic (here and in
//! `returns`), the voice-of-the-customer analyses (`voice`), complaint
//! states and defection causes (`complaints`), the contact decision
//! (`contact`), and what an erasure keeps and how a re-key is announced
//! (`lifecycle`). (The limits on order lines are contract rules shared with
//! the gateway: `crm_runtime::validate::order`.)

pub mod complaints;
pub mod contact;
pub mod lifecycle;
pub mod returns;
pub mod voice;

/// One line as the arithmetic sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Units.
    pub quantity: i64,
    /// Price of one unit, minor units.
    pub unit_price: i64,
    /// Cost of one unit, minor units.
    pub unit_cost: i64,
}

/// Exact totals of an order, minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Σ quantity × unit price.
    pub revenue: i64,
    /// Σ quantity × unit cost.
    pub cost: i64,
}

impl Totals {
    /// Revenue − cost.
    pub fn margin(&self) -> i64 {
        self.revenue - self.cost
    }
}

/// Exact totals, or `None` if they do not fit in 64 bits (within the
/// contract's limits a sum can still exceed it: 500 × 10^6 × 10^12).
pub fn totals(lines: &[Line]) -> Option<Totals> {
    let mut t = Totals::default();
    for l in lines {
        t.revenue = t.revenue.checked_add(l.quantity.checked_mul(l.unit_price)?)?;
        t.cost = t.cost.checked_add(l.quantity.checked_mul(l.unit_cost)?)?;
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_runtime::validate::{MAX_QUANTITY, MAX_UNIT_AMOUNT};

    fn line(quantity: i64, unit_price: i64, unit_cost: i64) -> Line {
        Line { quantity, unit_price, unit_cost }
    }

    #[test]
    fn totals_are_exact() {
        let t = totals(&[line(2, 1999, 1200), line(1, 500, 100)]).unwrap();
        assert_eq!(t, Totals { revenue: 4498, cost: 2500 });
        assert_eq!(t.margin(), 1998);
    }

    #[test]
    fn overflow_is_detected() {
        let big = line(MAX_QUANTITY, MAX_UNIT_AMOUNT, 0);
        assert!(totals(&vec![big; 10]).is_none());
    }
}
