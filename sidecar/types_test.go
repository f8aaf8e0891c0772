package sidecar_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// The expected values are the contract: integers as exact numbers, DECIMAL as strings,
// FLOAT/DOUBLE as shortest round-trip numbers, bytes as base64, times as RFC 3339 in UTC,
// JSON embedded, NULL as null, and "" distinct from NULL.
const typesSchema = `
CREATE TABLE types (
  id BIGINT NOT NULL PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT, iu INT UNSIGNED,
  bi BIGINT, bu BIGINT UNSIGNED, dec1 DECIMAL(65,30), dec2 DECIMAL(10,2),
  f FLOAT, d DOUBLE, c CHAR(10), vc VARCHAR(100), tx TEXT, lt LONGTEXT,
  bn BINARY(4), vb VARBINARY(10), bl BLOB,
  dt DATE, dtm DATETIME, dtm6 DATETIME(6), ts TIMESTAMP(3) NULL DEFAULT NULL, tm TIME, yr YEAR,
  js JSON, en ENUM('a','b'), st SET('x','y','z'), bt BIT(64), b1 BIT(1)
);
SET time_zone = '+00:00';
INSERT INTO types VALUES (1,
  127, 255, 32767, 8388607, 2147483647, 4294967295,
  9223372036854775807, 18446744073709551615, '12345678901234567890123456789012345.123456789012345678901234567891', '99999999.99',
  3.14, 0.30000000000000004, 'abc', 'ünïcödé ✓ "q" \\ tab\there\nnl', 'text', REPEAT('L', 70000),
  0x00FF0010, '', 0xDEADBEEF00,
  '2024-02-29', '9999-12-31 23:59:59', '2024-01-02 03:04:05.123456', '2038-01-19 03:14:07.999', '838:59:59', 2155,
  '{"a":[1,2.5,"x"],"b":null}', 'b', 'x,z', b'1111111111111111111111111111111111111111111111111111111111111111', b'1');
INSERT INTO types VALUES (2,
  -128, 0, -32768, -8388608, -2147483648, 0,
  -9223372036854775808, 0, '-0.000000000000000000000000000001', '-99999999.99',
  -1.5e-10, -1.7976931348623157e308, '', '', '', '',
  0x00000000, 0x00, '',
  '1000-01-01', '1000-01-01 00:00:00', '1000-01-01 00:00:00.000001', '1970-01-01 00:00:01.000', '-838:59:59', 1901,
  '[]', 'a', '', 0, b'0');
INSERT INTO types (id) VALUES (3)`

var typesWant = map[string]string{
	"1": `{"id":1,"ti":127,"tiu":255,"si":32767,"mi":8388607,"i":2147483647,"iu":4294967295,
		"bi":9223372036854775807,"bu":18446744073709551615,"dec1":"12345678901234567890123456789012345.123456789012345678901234567891","dec2":"99999999.99",
		"f":3.14,"d":0.30000000000000004,"c":"abc","vc":"ünïcödé ✓ \"q\" \\ tab\there\nnl","tx":"text","lt":"` + string(bytes.Repeat([]byte("L"), 70000)) + `",
		"bn":"AP8AEA==","vb":"","bl":"3q2+7wA=",
		"dt":"2024-02-29","dtm":"9999-12-31T23:59:59Z","dtm6":"2024-01-02T03:04:05.123456Z","ts":"2038-01-19T03:14:07.999Z","tm":"838:59:59","yr":2155,
		"js":{"a":[1,2.5,"x"],"b":null},"en":"b","st":"x,z","bt":18446744073709551615,"b1":1}`,
	"2": `{"id":2,"ti":-128,"tiu":0,"si":-32768,"mi":-8388608,"i":-2147483648,"iu":0,
		"bi":-9223372036854775808,"bu":0,"dec1":"-0.000000000000000000000000000001","dec2":"-99999999.99",
		"f":-1.5e-10,"d":-1.7976931348623157e+308,"c":"","vc":"","tx":"","lt":"",
		"bn":"AAAAAA==","vb":"AA==","bl":"",
		"dt":"1000-01-01","dtm":"1000-01-01T00:00:00Z","dtm6":"1000-01-01T00:00:00.000001Z","ts":"1970-01-01T00:00:01.000Z","tm":"-838:59:59","yr":1901,
		"js":[],"en":"a","st":"","bt":0,"b1":0}`,
	"3": `{"id":3,"ti":null,"tiu":null,"si":null,"mi":null,"i":null,"iu":null,"bi":null,"bu":null,"dec1":null,"dec2":null,
		"f":null,"d":null,"c":null,"vc":null,"tx":null,"lt":null,"bn":null,"vb":null,"bl":null,
		"dt":null,"dtm":null,"dtm6":null,"ts":null,"tm":null,"yr":null,"js":null,"en":null,"st":null,"bt":null,"b1":null}`,
}

func TestEveryColumnTypeRoundTrips(t *testing.T) {
	e := newDB(t, typesSchema).start("entities:\n  - name: types\n")
	for id, want := range typesWant {
		miss := e.get("/v1/types/"+id).want(t, 200, "miss")
		hit := e.get("/v1/types/"+id).want(t, 200, "hit")
		if !bytes.Equal(miss.body, hit.body) {
			t.Errorf("id %s: the cached body differs from the loaded one", id)
		}
		assertSameJSON(t, id, hit.body, []byte(want))
	}
	// The multi-get path encodes the same way.
	r := e.get("/v1/types?id=1&id=2&id=3").want(t, 200, "hit")
	var many struct{ Items map[string]json.RawMessage }
	if err := json.Unmarshal(r.body, &many); err != nil {
		t.Fatal(err)
	}
	for id, want := range typesWant {
		assertSameJSON(t, "multi "+id, many.Items[id], []byte(want))
	}
}

// assertSameJSON compares two JSON documents exactly: numbers by their digits, key by key.
func assertSameJSON(t *testing.T, what string, got, want []byte) {
	t.Helper()
	decode := func(b []byte) map[string]any {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			t.Fatalf("%s: %v in %.200s", what, err, b)
		}
		return m
	}
	g, w := decode(got), decode(want)
	for k, wv := range w {
		if gv, ok := g[k]; !ok || !reflect.DeepEqual(gv, wv) {
			t.Errorf("%s: %s = %.80v (%T), want %.80v (%T)", what, k, gv, gv, wv, wv)
		}
	}
	for k := range g {
		if _, ok := w[k]; !ok {
			t.Errorf("%s: unexpected column %s", what, k)
		}
	}
}
