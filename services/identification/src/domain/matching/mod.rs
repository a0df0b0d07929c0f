//! Probabilistic record linkage (Fellegi–Sunter).
