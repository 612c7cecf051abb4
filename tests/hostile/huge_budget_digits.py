# A partition budget of 5,000 digits: past Python's int-to-str limit, so the worker cannot even
# print it. The reason must still say what the policy did.
# expect: failed budget (a 5000-digit number) does not fit in 64 bits
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def partition(replica, params):
    digits = 4999 + replica.replica * 0
    return (10**digits, ())
