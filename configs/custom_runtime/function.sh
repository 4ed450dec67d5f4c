# A Lambda handler in shell: the event's Kinesis records in, one item per record out (the page of
# each click), and a batchItemFailures entry for a record whose data is not JSON.
handler() {
  echo "$1" | jq -c '[.Records[] | {seq: .kinesis.sequenceNumber, data: (.kinesis.data | @base64d | try fromjson catch null)}]
    | {items: [.[] | select(.data != null) | {page: .data.page, seq}],
       batchItemFailures: [.[] | select(.data == null) | {itemIdentifier: .seq}][:1]}'
}
