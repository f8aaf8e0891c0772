package cdc

import (
	"strings"
	"unicode/utf8"
)

// A statement in the binlog (DDL, or DML a session logged in STATEMENT format) does not say
// which rows it changed, so the tail drops the whole cache of every entity whose table it names.
// The scan of its text is deliberately conservative: a name mentioned anywhere (inside comments,
// in a source table) counts, because an extra drop costs cache misses and a missed one serves
// wrong rows. Only statements known to leave every row as it was are passed over.

// sqlToken is one token of a statement: an identifier (bare, `quoted` or "quoted") or a single
// punctuation character. String literals are skipped.
type sqlToken struct {
	text   string
	ident  bool
	quoted bool
}

// tokenize splits a statement into identifiers and punctuation, skipping string literals.
func tokenize(q string) []sqlToken {
	var out []sqlToken
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '\'':
			i = skipQuoted(q, i, '\'')
		case c == '`' || c == '"':
			end, text := readQuoted(q, i, c)
			out = append(out, sqlToken{text: text, ident: true, quoted: true})
			i = end
		case isIdentByte(c):
			j := i
			for j < len(q) && isIdentByte(q[j]) {
				j++
			}
			out = append(out, sqlToken{text: q[i:j], ident: true})
			i = j
		default:
			_, size := utf8.DecodeRuneInString(q[i:])
			out = append(out, sqlToken{text: q[i : i+size]})
			i += size
		}
	}
	return out
}

func isIdentByte(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

// skipQuoted returns the index after the literal that starts at q[i], honouring doubled quotes
// and backslash escapes.
func skipQuoted(q string, i int, quote byte) int {
	for j := i + 1; j < len(q); j++ {
		switch q[j] {
		case '\\':
			j++
		case quote:
			if j+1 < len(q) && q[j+1] == quote {
				j++
				continue
			}
			return j + 1
		}
	}
	return len(q)
}

// readQuoted reads a quoted identifier starting at q[i] (a doubled quote stands for one).
func readQuoted(q string, i int, quote byte) (end int, text string) {
	var b strings.Builder
	for j := i + 1; j < len(q); j++ {
		if q[j] == quote {
			if j+1 < len(q) && q[j+1] == quote {
				b.WriteByte(quote)
				j++
				continue
			}
			return j + 1, b.String()
		}
		b.WriteByte(q[j])
	}
	return len(q), b.String()
}

// tableRef is a table a statement names, with its database when qualified.
type tableRef struct {
	schema, table string
}

// statementRefs returns the tables a statement may change and the databases it names whole
// (DROP DATABASE and the like), or reports it harmless: it leaves every row as it was.
func statementRefs(q string) (tables []tableRef, databases []string, isHarmless bool) {
	toks := tokenize(q)
	if len(toks) == 0 || harmless(toks) {
		return nil, nil, true
	}
	// CREATE TABLE changes only the table it creates: LIKE t and AS SELECT ... FROM t read t.
	if t, ok := createdTable(toks); ok {
		return []tableRef{t}, nil, false
	}
	for i := 0; i < len(toks); i++ {
		tk := toks[i]
		if !tk.ident {
			continue
		}
		if !tk.quoted && (strings.EqualFold(tk.text, "DATABASE") || strings.EqualFold(tk.text, "SCHEMA")) {
			for j := i + 1; j < len(toks) && j < i+5; j++ {
				if toks[j].ident && (toks[j].quoted || !isKeyword(toks[j].text)) {
					databases = append(databases, toks[j].text)
					break
				}
			}
		}
		if i+2 < len(toks) && toks[i+1].text == "." && toks[i+2].ident {
			tables = append(tables, tableRef{schema: tk.text, table: toks[i+2].text})
			i += 2
			continue
		}
		tables = append(tables, tableRef{table: tk.text})
	}
	return tables, databases, false
}

// isKeyword reports the words that may sit between DATABASE and its name.
func isKeyword(w string) bool {
	switch strings.ToUpper(w) {
	case "IF", "EXISTS", "NOT":
		return true
	}
	return false
}

// harmless reports statements that leave every row of every table as it was.
func harmless(toks []sqlToken) bool {
	first := strings.ToUpper(toks[0].text)
	switch first {
	case "ANALYZE", "OPTIMIZE", "CHECK", "CHECKSUM", "GRANT", "REVOKE", "FLUSH", "SET":
		return true
	case "CREATE", "DROP", "ALTER":
		// CREATE [OR REPLACE] [DEFINER=...] [UNIQUE] {TRIGGER|VIEW|INDEX|USER|ROLE|...}: look
		// for the object keyword among the leading words.
		for _, t := range toks[1:min(len(toks), 24)] {
			if !t.ident || t.quoted {
				continue
			}
			switch strings.ToUpper(t.text) {
			case "TRIGGER", "VIEW", "INDEX", "USER", "ROLE", "EVENT", "PROCEDURE", "FUNCTION", "SERVER", "SEQUENCE":
				return true
			case "TABLE", "DATABASE", "SCHEMA":
				return false
			}
		}
	}
	return false
}

// createdTable returns the table of a CREATE [OR REPLACE] [TEMPORARY] TABLE [IF NOT EXISTS] t.
func createdTable(toks []sqlToken) (tableRef, bool) {
	if !strings.EqualFold(toks[0].text, "CREATE") {
		return tableRef{}, false
	}
	i := 1
	for i < len(toks) && toks[i].ident && !toks[i].quoted {
		switch strings.ToUpper(toks[i].text) {
		case "OR", "REPLACE", "TEMPORARY":
			i++
			continue
		case "TABLE":
			i++
			for i < len(toks) && toks[i].ident && !toks[i].quoted && isKeyword(toks[i].text) {
				i++
			}
			if i >= len(toks) || !toks[i].ident {
				return tableRef{}, false
			}
			if i+2 < len(toks) && toks[i+1].text == "." && toks[i+2].ident {
				return tableRef{schema: toks[i].text, table: toks[i+2].text}, true
			}
			return tableRef{table: toks[i].text}, true
		}
		return tableRef{}, false
	}
	return tableRef{}, false
}
