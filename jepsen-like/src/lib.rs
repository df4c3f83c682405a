//! Jepsen-like testing of real `ltxfs` processes: real faults, a recorded history, a checker.
