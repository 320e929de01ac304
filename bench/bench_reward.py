"""The benchmark's reward for both sides: with fixed-length generation a completion
never ends with EOS, so it is correct when it starts with the answer."""


def prefix_match(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0 if solution_str.strip().startswith(str(ground_truth)) else 0.0
