"""Reference methods to compare FedBPT against, on the same model, data, partitions and evaluation set.

- ``prompt_tuning`` (torch): one party's round of FedPrompt (soft prompt) and FedP-tuning (deep prompts).
- ``federated``: the FedAvg loop over parties for those two gradient methods.
- ``incontext``: zero-shot and in-context learning with demonstrations from a party's own data.

FedBPT and FedAvg-BBT themselves are ``fedbpt.simulate`` with aggregators ``fedbpt`` and ``fedavg``.
"""
