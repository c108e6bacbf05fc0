//! Graph files: parse, validate, plan.
