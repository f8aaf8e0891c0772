package devstack

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// SampleSchema creates three tables whose columns cover the common MySQL types: items
// (BIGINT UNSIGNED key), users (INT key) and countries (CHAR(2) key).
const SampleSchema = `
CREATE TABLE items (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  sku         CHAR(12) NOT NULL,
  name        VARCHAR(200) NOT NULL,
  description TEXT NULL,
  price       DECIMAL(12,2) NOT NULL,
  weight_kg   DOUBLE NULL,
  rating      FLOAT NULL,
  stock       INT NOT NULL,
  active      TINYINT(1) NOT NULL,
  flags       BIT(8) NOT NULL,
  color       ENUM('red','green','blue') NULL,
  tags        JSON NULL,
  thumbnail   VARBINARY(64) NULL,
  released    DATE NULL,
  created_at  DATETIME(3) NOT NULL,
  updated_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
);
CREATE TABLE users (
  id            INT NOT NULL PRIMARY KEY,
  email         VARCHAR(255) NOT NULL,
  display_name  VARCHAR(100) NOT NULL,
  bio           TEXT NULL,
  avatar        BLOB NULL,
  birthday      DATE NULL,
  balance_cents BIGINT NOT NULL,
  last_login    TIMESTAMP(6) NULL
);
CREATE TABLE countries (
  code        CHAR(2) NOT NULL PRIMARY KEY,
  name        VARCHAR(100) NOT NULL,
  population  BIGINT UNSIGNED NOT NULL,
  area_km2    DOUBLE NOT NULL,
  founded     YEAR NULL
);
`

// SampleEntities is the entities section of a config that serves SampleSchema.
const SampleEntities = `entities:
  - name: items
    table: items
    key: id
    ttl: 10m
    ttl_jitter: 0.1
    null_ttl: 1m
  - name: users
    table: users
    columns: [id, display_name, bio, avatar, birthday, balance_cents, last_login]
    ttl: 5m
    null_ttl: 30s
  - name: countries
    ttl: 1h
    ttl_jitter: 0.2
`

var countries = [][3]any{
	{"AR", "Argentina", 45_800_000}, {"AU", "Australia", 26_000_000}, {"BR", "Brazil", 216_400_000},
	{"CA", "Canada", 40_100_000}, {"CN", "China", 1_410_000_000}, {"DE", "Germany", 84_500_000},
	{"EG", "Egypt", 112_700_000}, {"ES", "Spain", 48_300_000}, {"FR", "France", 68_200_000},
	{"GB", "United Kingdom", 68_300_000}, {"IN", "India", 1_428_600_000}, {"IT", "Italy", 58_900_000},
	{"JP", "Japan", 124_500_000}, {"KE", "Kenya", 55_100_000}, {"KR", "South Korea", 51_700_000},
	{"MX", "Mexico", 128_500_000}, {"NG", "Nigeria", 223_800_000}, {"NL", "Netherlands", 17_900_000},
	{"NO", "Norway", 5_500_000}, {"NZ", "New Zealand", 5_200_000}, {"PL", "Poland", 36_800_000},
	{"PT", "Portugal", 10_400_000}, {"SE", "Sweden", 10_500_000}, {"US", "United States", 334_900_000},
	{"ZA", "South Africa", 60_400_000},
}

// SeedSample creates SampleSchema in db and fills it: items and users rows each, and the
// countries. The data is the same on every run.
func SeedSample(ctx context.Context, db *sql.DB, items, users int) error {
	for _, stmt := range strings.Split(SampleSchema, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("devstack: schema: %w", err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	words := []string{"red", "steel", "bolt", "lamp", "chair", "cable", "wool", "oak", "glass", "pan", "kettle", "rope"}
	colors := []any{"red", "green", "blue", nil}

	err := insertBatches(ctx, db, "items (id, sku, name, description, price, weight_kg, rating, stock, active, flags, color, tags, thumbnail, released, created_at)",
		15, items, func(i int) []any {
			n := i + 1
			var desc, weight, tags, thumb, released any
			if n%5 != 0 {
				desc = fmt.Sprintf("A %s %s.\nLine two with \"quotes\", a tab\tand ünïcödé ✓", words[n%len(words)], words[(n/3)%len(words)])
				weight = float64(rng.IntN(100000)) / 1000
				tags = fmt.Sprintf(`{"tags":[%q,%q],"n":%d}`, words[n%len(words)], words[(n*7)%len(words)], n)
				thumb = []byte{byte(n), byte(n >> 8), 0, 0xff, '"'}
				released = base.AddDate(0, 0, n%700).Format("2006-01-02")
			}
			return []any{n, fmt.Sprintf("SKU-%08d", n), fmt.Sprintf("%s %s #%d", words[n%len(words)], words[(n/7)%len(words)], n),
				desc, fmt.Sprintf("%d.%02d", rng.IntN(100000), rng.IntN(100)), weight, float32(rng.IntN(50)) / 10,
				rng.IntN(1000) - 10, n%3 != 0, n % 256, colors[n%4], tags, thumb, released,
				base.Add(time.Duration(n) * 37 * time.Minute).Add(time.Duration(n%1000) * time.Millisecond).Format("2006-01-02 15:04:05.000")}
		})
	if err != nil {
		return err
	}
	err = insertBatches(ctx, db, "users (id, email, display_name, bio, avatar, birthday, balance_cents, last_login)",
		8, users, func(i int) []any {
			n := i + 1
			var bio, avatar, birthday, login any
			if n%4 != 0 {
				bio = fmt.Sprintf("user %d likes %s", n, words[n%len(words)])
				avatar = []byte(fmt.Sprintf("\x89PNG%d", n))
				birthday = time.Date(1960+n%45, time.Month(1+n%12), 1+n%28, 0, 0, 0, 0, time.UTC).Format("2006-01-02")
				login = base.Add(time.Duration(n) * 1234567 * time.Microsecond).Format("2006-01-02 15:04:05.000000")
			}
			return []any{n, fmt.Sprintf("user%d@example.com", n), fmt.Sprintf("User %d", n), bio, avatar, birthday,
				int64(rng.IntN(2_000_000)) - 1_000_000, login}
		})
	if err != nil {
		return err
	}
	return insertBatches(ctx, db, "countries (code, name, population, area_km2, founded)", 5, len(countries),
		func(i int) []any {
			c := countries[i]
			var founded any
			if i%3 != 0 {
				founded = 1901 + i*3
			}
			return []any{c[0], c[1], c[2], float64(c[2].(int)%997_000) + 0.25, founded}
		})
}

// insertBatches inserts n rows of cols placeholders each, a few hundred per statement.
func insertBatches(ctx context.Context, db *sql.DB, into string, cols, n int, row func(i int) []any) error {
	const batch = 500
	tuple := "(" + strings.TrimSuffix(strings.Repeat("?,", cols), ",") + ")"
	for start := 0; start < n; start += batch {
		end := min(start+batch, n)
		args := make([]any, 0, (end-start)*cols)
		tuples := make([]string, 0, end-start)
		for i := start; i < end; i++ {
			args = append(args, row(i)...)
			tuples = append(tuples, tuple)
		}
		if _, err := db.ExecContext(ctx, "INSERT INTO "+into+" VALUES "+strings.Join(tuples, ","), args...); err != nil {
			return fmt.Errorf("devstack: insert into %s: %w", into, err)
		}
	}
	return nil
}

// StartSample starts a stack with opts, creates database db with a user of the same name, and
// fills it with SeedSample: what a load program starts from. The caller stops the stack; dsn
// is that user's.
func StartSample(ctx context.Context, opts Options, db string, items, users int) (s *Stack, dsn string, err error) {
	if s, err = Start(ctx, opts); err != nil {
		return nil, "", err
	}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if dsn, err = s.CreateDatabase(ctx, db); err != nil {
		return nil, "", err
	}
	root, err := s.Root(db)
	if err != nil {
		return nil, "", err
	}
	defer root.Close()
	if err := SeedSample(ctx, root, items, users); err != nil {
		return nil, "", err
	}
	return s, dsn, nil
}
