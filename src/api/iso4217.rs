//! ISO 4217 numeric currency codes: a card's limits are counted in one, and a code no
//! currency has (a typo of `978`, say) would make a card that declines every purchase.
//!
//! The list is ISO 4217's list one, current currencies and funds (the X codes of precious
//! metals, SDR, bond units and testing included), as Debian's `iso-codes` 4.15 carries it,
//! with `924` (ZWG, assigned in 2024) added and `999` (XXX, "no currency") left out. A few
//! codes withdrawn since 2021 are still in it (`191` HRK, `694` SLL, `932` ZWL, `931` CUC):
//! a card in one of them is harmless, and a network may still send them for a while.
//! `532` is both ANG and XCG, its successor. A code assigned later is refused until it is
//! added here.

/// The assigned numeric codes, ascending.
const ASSIGNED: [u16; 181] = [
    8, 12, 32, 36, 44, 48, 50, 51, 52, 60, 64, 68, 72, 84, 90, 96, 104, 108, 116, 124, 132, 136,
    144, 152, 156, 170, 174, 188, 191, 192, 203, 208, 214, 222, 230, 232, 238, 242, 262, 270, 292,
    320, 324, 328, 332, 340, 344, 348, 352, 356, 360, 364, 368, 376, 388, 392, 398, 400, 404, 408,
    410, 414, 417, 418, 422, 426, 430, 434, 446, 454, 458, 462, 480, 484, 496, 498, 504, 512, 516,
    524, 532, 533, 548, 554, 558, 566, 578, 586, 590, 598, 600, 604, 608, 634, 643, 646, 654, 682,
    690, 694, 702, 704, 706, 710, 728, 748, 752, 756, 760, 764, 776, 780, 784, 788, 800, 807, 818,
    826, 834, 840, 858, 860, 882, 886, 901, 924, 925, 926, 927, 928, 929, 930, 931, 932, 933, 934,
    936, 938, 940, 941, 943, 944, 946, 947, 948, 949, 950, 951, 952, 953, 955, 956, 957, 958, 959,
    960, 961, 962, 963, 964, 965, 967, 968, 969, 970, 971, 972, 973, 975, 976, 977, 978, 979, 980,
    981, 984, 985, 986, 990, 994, 997,
];

/// Whether `code` is an ISO 4217 numeric code that names a currency or fund.
pub fn is_assigned(code: u16) -> bool {
    ASSIGNED.binary_search(&code).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_ascending_and_of_three_digit_codes() {
        assert!(ASSIGNED.windows(2).all(|w| w[0] < w[1]));
        assert!(ASSIGNED.iter().all(|&c| (1..1000).contains(&c)));
    }

    #[test]
    fn currencies_in_use_are_assigned_and_typos_and_placeholders_are_not() {
        // EUR, USD, JPY, GBP, AUD (036: leading zero), ZWG (2024), XCG/ANG, XTS (testing).
        for code in [978, 840, 392, 826, 36, 924, 532, 963] {
            assert!(is_assigned(code), "{code}");
        }
        // 987 and 879 (EUR's digits swapped), 000, 999 (no currency), 1 and 998.
        for code in [987, 879, 0, 999, 1, 998] {
            assert!(!is_assigned(code), "{code}");
        }
    }
}
