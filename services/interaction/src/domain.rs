//! Pure interaction logic: order arithmetic and its limits. No I/O.

/// Most lines in one order.
pub const MAX_LINES: usize = 500;
/// Largest quantity on one line.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Largest unit price or cost, in minor units (10^12: ten billion in a
/// two-decimal currency).
pub const MAX_UNIT_AMOUNT: i64 = 1_000_000_000_000;

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

/// Why a line is unacceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// Quantity outside 1..=MAX_QUANTITY.
    Quantity,
    /// Price outside 0..=MAX_UNIT_AMOUNT.
    Price,
    /// Cost outside 0..=MAX_UNIT_AMOUNT.
    Cost,
}

/// Check one line against the limits.
pub fn check_line(line: &Line) -> Result<(), LineError> {
    if !(1..=MAX_QUANTITY).contains(&line.quantity) {
        return Err(LineError::Quantity);
    }
    if !(0..=MAX_UNIT_AMOUNT).contains(&line.unit_price) {
        return Err(LineError::Price);
    }
    if !(0..=MAX_UNIT_AMOUNT).contains(&line.unit_cost) {
        return Err(LineError::Cost);
    }
    Ok(())
}

/// Exact totals of valid lines. Within the limits the sums cannot overflow
/// (500 × 10^6 × 10^12 = 5·10^20 could): checked arithmetic says so when
/// they would.
pub fn totals(lines: &[Line]) -> Option<Totals> {
    let mut t = Totals::default();
    for l in lines {
        t.revenue = t.revenue.checked_add(l.quantity.checked_mul(l.unit_price)?)?;
        t.cost = t.cost.checked_add(l.quantity.checked_mul(l.unit_cost)?)?;
    }
    Some(t)
}

/// Whether `code` looks like an ISO 4217 currency code (three upper-case letters).
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn lines_are_checked() {
        assert_eq!(check_line(&line(0, 1, 1)), Err(LineError::Quantity));
        assert_eq!(check_line(&line(1, -1, 1)), Err(LineError::Price));
        assert_eq!(check_line(&line(1, 1, MAX_UNIT_AMOUNT + 1)), Err(LineError::Cost));
        assert_eq!(check_line(&line(1, 0, 0)), Ok(()));
    }

    #[test]
    fn currency_codes() {
        assert!(is_currency_code("EUR"));
        assert!(!is_currency_code("eur"));
        assert!(!is_currency_code("EURO"));
        assert!(!is_currency_code(""));
    }
}
