"""An independent CloudEvents consumer for the HTTP sink's tests: reads requests captured by the
test receiver (a JSON list of {headers, body}) with the `cloudevents` package and prints every
event it finds as {attributes, data}, in order, as JSON."""

import json
import sys

from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat

BATCH = "application/cloudevents-batch+json"


def as_output(event):
    attributes = {}
    for name, value in event.get_attributes().items():
        attributes[name] = value.isoformat() if name == "time" else value
    return {"attributes": attributes, "data": event.get_data()}


def main(path):
    with open(path, encoding="utf-8") as f:
        requests = json.load(f)
    events = []
    fmt = JSONFormat()
    for request in requests:
        headers = request["headers"]
        body = request["body"].encode("utf-8")
        if headers.get("content-type", "").startswith(BATCH):
            # The package reads single events; a batch is a JSON array of structured ones.
            for item in json.loads(body):
                events.append(fmt.read(None, json.dumps(item).encode("utf-8")))
        else:
            events.append(from_http(HTTPMessage(headers=headers, body=body), fmt))
    json.dump([as_output(e) for e in events], sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
