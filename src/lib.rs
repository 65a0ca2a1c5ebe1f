//! burn-peft
