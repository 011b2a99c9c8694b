#!/usr/bin/python3
"""show_gen.py: the generated text of each request in a gen.jsonl, readable.

    analysis/show_gen.py runs/gpt-tiny-gen/gen.jsonl [--requests inputs/prompts.jsonl]

Reads Partita's flat gen.jsonl lines ({"id", "status", "text", "tokens", ...}) and
OpenAI batch output lines ({"custom_id", "response": {"body": {"choices": [{"text"}]}}}
or {"error": ...}). With --requests, each prompt is printed before its output.
`make demo` runs it after generating.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import partita_h5  # noqa: E402,F401  (quiet exit when piped into head)


def outputs(path):
    """[(id, status, text, n_tokens or None)] in file order."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if not isinstance(o, dict):
                continue
            if "custom_id" in o:   # OpenAI batch output shape
                resp, err = o.get("response") or {}, o.get("error")
                body = resp.get("body") or {}
                ch = (body.get("choices") or [{}])[0]
                usage = body.get("usage") or {}
                status = ch.get("finish_reason") or ("refused: " + str((err or {}).get("message", err)) if err else "?")
                out.append((str(o["custom_id"]), status, ch.get("text", ""), usage.get("completion_tokens")))
            else:
                toks = o.get("tokens")
                status = o.get("status", "?")
                if o.get("reason"):
                    status += ": " + str(o["reason"])
                out.append((str(o.get("id")), status, o.get("text", ""), len(toks) if isinstance(toks, list) else None))
    return out


def prompts(path):
    found = {}
    if not path:
        return found
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if isinstance(o, dict) and isinstance(o.get("prompt"), str):
                found[str(o.get("id", o.get("custom_id")))] = o["prompt"]
    return found


def main():
    ap = argparse.ArgumentParser(description="Print each request's generated text from a gen.jsonl.")
    ap.add_argument("jsonl", help="gen.jsonl written by `partita generate`")
    ap.add_argument("--requests", help="the requests file, to print each prompt before its output")
    args = ap.parse_args()
    if not os.path.isfile(args.jsonl):
        print(f"error: '{args.jsonl}' does not exist\nhint: run `partita generate DECK` first", file=sys.stderr)
        sys.exit(2)
    ps = prompts(args.requests)
    outs = outputs(args.jsonl)
    for rid, status, text, n in outs:
        head = f"--- {rid} ({status}" + (f", {n} tokens" if n is not None else "") + ")"
        print(head)
        body = (f"{ps[rid]}[...]" if rid in ps else "") + (text or "")
        for ln in body.splitlines() or [""]:
            print("    " + ln)
    print(f"({len(outs)} request{'s' if len(outs) != 1 else ''} in {args.jsonl}"
          + ("; [...] marks where each prompt ends" if ps else "") + ")")


if __name__ == "__main__":
    main()
