// The Go clients of the compatibility suite, from Debian's packages (GOPATH mode): sarama and
// confluent-kafka-go, each through the scenarios of scenarios.py. Prints one JSON object per
// scenario: {"client", "version", "scenario", "result"} where result is "pass", "FAIL: why"
// or "n/a: why".
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o target/compat-go tests/compat/go/main.go
//	target/compat-go -bootstrap 127.0.0.1:9092 -client sarama
package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Shopify/sarama"
	"github.com/confluentinc/confluent-kafka-go/kafka"
)

const wait = 60 * time.Second

var codecs = []string{"none", "gzip", "snappy", "lz4", "zstd"}

type record struct {
	key, value string
	headers    map[string]string
}

func records(n int, tag string) []record {
	out := make([]record, n)
	for i := range out {
		out[i] = record{
			key:     fmt.Sprintf("k%d", i),
			value:   fmt.Sprintf("%s-%d", tag, i),
			headers: map[string]string{"h1": "one", "h2": fmt.Sprint(i)},
		}
	}
	return out
}

func same(got, sent []record) error {
	key := func(r record) string {
		var hs []string
		for k, v := range r.headers {
			hs = append(hs, k+"="+v)
		}
		sort.Strings(hs)
		return r.key + "|" + r.value + "|" + strings.Join(hs, ",")
	}
	a, b := []string{}, []string{}
	for _, r := range got {
		a = append(a, key(r))
	}
	for _, r := range sent {
		b = append(b, key(r))
	}
	sort.Strings(a)
	sort.Strings(b)
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		return fmt.Errorf("got %d records %v..., want %d", len(a), a[:min(2, len(a))], len(b))
	}
	return nil
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

var counter int

func unique(what string) string {
	counter++
	return fmt.Sprintf("compat-go-%s-%d-%d", what, time.Now().UnixNano()%1e9, counter)
}

type notApplicable string

// ------------------------------------------------------------------------------ sarama

type saramaClient struct {
	addrs []string
	// TLS, and SASL with a mechanism, user and password, when set.
	tls                       *tls.Config
	mechanism, user, password string
}

func (s saramaClient) config() *sarama.Config {
	c := sarama.NewConfig()
	if s.tls != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = s.tls
	}
	if s.mechanism != "" {
		c.Net.SASL.Enable = true
		c.Net.SASL.Handshake = true
		c.Net.SASL.Mechanism = sarama.SASLMechanism(s.mechanism)
		c.Net.SASL.User = s.user
		c.Net.SASL.Password = s.password
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{} }
	}
	c.Version = sarama.V2_1_0_0
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	// Without a retention sarama 1.22 commits with OffsetCommit v1, which Kafka 4 removed
	// (KIP-896) and Strata, like it, does not implement; with one it uses v2.
	c.Consumer.Offsets.Retention = 7 * 24 * time.Hour
	c.Admin.Timeout = wait
	return c
}

func (s saramaClient) create(topic string, partitions int32, configs map[string]*string) error {
	admin, err := sarama.NewClusterAdmin(s.addrs, s.config())
	if err != nil {
		return err
	}
	defer admin.Close()
	return admin.CreateTopic(topic, &sarama.TopicDetail{
		NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: configs,
	}, false)
}

func (s saramaClient) produce(topic string, sent []record, config *sarama.Config) error {
	p, err := sarama.NewSyncProducer(s.addrs, config)
	if err != nil {
		return err
	}
	defer p.Close()
	for _, r := range sent {
		m := &sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(r.value)}
		if r.key != "" {
			m.Key = sarama.StringEncoder(r.key)
		}
		for k, v := range r.headers {
			m.Headers = append(m.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
		}
		if _, _, err := p.SendMessage(m); err != nil {
			return err
		}
	}
	return nil
}

// consume reads n records from every partition of topic, from the start.
func (s saramaClient) consume(topic string, n int) ([]record, error) {
	c, err := sarama.NewConsumer(s.addrs, s.config())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	parts, err := c.Partitions(topic)
	if err != nil {
		return nil, err
	}
	out := make(chan record, n)
	deadline := time.After(wait)
	for _, p := range parts {
		pc, err := c.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			return nil, err
		}
		defer pc.Close()
		go func() {
			for m := range pc.Messages() {
				r := record{key: string(m.Key), value: string(m.Value), headers: map[string]string{}}
				for _, h := range m.Headers {
					r.headers[string(h.Key)] = string(h.Value)
				}
				out <- r
			}
		}()
	}
	var got []record
	for len(got) < n {
		select {
		case r := <-out:
			got = append(got, r)
		case <-deadline:
			return got, fmt.Errorf("%d of %d records within %v", len(got), n, wait)
		}
	}
	return got, nil
}

func (s saramaClient) codecs() error {
	kinds := map[string]sarama.CompressionCodec{
		"none": sarama.CompressionNone, "gzip": sarama.CompressionGZIP,
		"snappy": sarama.CompressionSnappy, "lz4": sarama.CompressionLZ4,
		"zstd": sarama.CompressionZSTD,
	}
	for _, codec := range codecs {
		topic := unique("codec-" + codec)
		if err := s.create(topic, 1, nil); err != nil {
			return err
		}
		config := s.config()
		config.Producer.Compression = kinds[codec]
		sent := records(20, codec)
		if err := s.produce(topic, sent, config); err != nil {
			return fmt.Errorf("%s: %v", codec, err)
		}
		got, err := s.consume(topic, len(sent))
		if err != nil {
			return fmt.Errorf("%s: %v", codec, err)
		}
		if err := same(got, sent); err != nil {
			return fmt.Errorf("%s: %v", codec, err)
		}
	}
	return nil
}

// groupHandler is one member's: `mu` (shared by the members) guards `seen` and the counts.
type groupHandler struct {
	mu       *sync.Mutex
	seen     map[string]bool
	assigned *int
}

func (h *groupHandler) Setup(sess sarama.ConsumerGroupSession) error {
	n := 0
	for _, ps := range sess.Claims() {
		n += len(ps)
	}
	h.mu.Lock()
	*h.assigned = n
	h.mu.Unlock()
	return nil
}
func (h *groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		h.mu.Lock()
		h.seen[string(m.Value)] = true
		h.mu.Unlock()
		sess.MarkMessage(m, "")
	}
	return nil
}

func (s saramaClient) group() error {
	topic, group := unique("group"), unique("g")
	if err := s.create(topic, 4, nil); err != nil {
		return err
	}
	sent := numbered(200)
	if err := s.produce(topic, sent, s.config()); err != nil {
		return err
	}
	seen := map[string]bool{}
	var mu sync.Mutex
	assigned := make([]int, 2)
	var groups []sarama.ConsumerGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stops := make([]context.CancelFunc, 2)
	for i := 0; i < 2; i++ {
		config := s.config()
		config.Consumer.Group.Session.Timeout = 10 * time.Second
		config.Consumer.Group.Heartbeat.Interval = 500 * time.Millisecond
		g, err := sarama.NewConsumerGroup(s.addrs, group, config)
		if err != nil {
			return err
		}
		groups = append(groups, g)
		h := &groupHandler{mu: &mu, seen: seen, assigned: &assigned[i]}
		memberCtx, stop := context.WithCancel(ctx)
		stops[i] = stop
		go func(g sarama.ConsumerGroup, h *groupHandler) {
			for memberCtx.Err() == nil {
				if err := g.Consume(memberCtx, []string{topic}, h); err != nil {
					return
				}
			}
		}(g, h)
	}
	deadline := time.Now().Add(wait)
	both := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return assigned[0] > 0 && assigned[1] > 0 && assigned[0]+assigned[1] == 4
	}
	held := func() int {
		mu.Lock()
		defer mu.Unlock()
		return assigned[1]
	}
	for time.Now().Before(deadline) && !both() {
		time.Sleep(100 * time.Millisecond)
	}
	if !both() {
		return fmt.Errorf("the members hold %v partitions, want both some of 4", assigned)
	}
	// One leaves: the other takes all four and reads the rest.
	stops[0]()
	groups[0].Close()
	for time.Now().Before(deadline) && (held() != 4 || count(seen, &mu) < 200) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a commit interval
	stops[1]()
	groups[1].Close()
	if n := held(); n != 4 {
		return fmt.Errorf("the member left holds %d partitions", n)
	}
	if n := count(seen, &mu); n != 200 {
		return fmt.Errorf("%d of 200 records consumed", n)
	}
	return s.committedTotal(group, topic, 4, 200)
}

func count(m map[string]bool, mu *sync.Mutex) int {
	mu.Lock()
	defer mu.Unlock()
	return len(m)
}

func (s saramaClient) committedTotal(group, topic string, partitions int32, want int64) error {
	admin, err := sarama.NewClusterAdmin(s.addrs, s.config())
	if err != nil {
		return err
	}
	defer admin.Close()
	var ps []int32
	for p := int32(0); p < partitions; p++ {
		ps = append(ps, p)
	}
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: ps})
	if err != nil {
		return err
	}
	var total int64
	for _, p := range ps {
		if b := resp.GetBlock(topic, p); b != nil && b.Offset > 0 {
			total += b.Offset
		}
	}
	if total != want {
		return fmt.Errorf("the group committed %d of %d", total, want)
	}
	return nil
}

func (s saramaClient) commits() error {
	topic, group := unique("commits"), unique("g")
	if err := s.create(topic, 1, nil); err != nil {
		return err
	}
	sent := numbered(10)
	if err := s.produce(topic, sent, s.config()); err != nil {
		return err
	}
	client, err := sarama.NewClient(s.addrs, s.config())
	if err != nil {
		return err
	}
	om, err := sarama.NewOffsetManagerFromClient(group, client)
	if err != nil {
		return err
	}
	pom, err := om.ManagePartition(topic, 0)
	if err != nil {
		return err
	}
	pom.MarkOffset(6, "six")
	pom.Close()
	om.Close()
	client.Close()
	return s.committedTotal(group, topic, 1, 6)
}

func (s saramaClient) admin() error {
	topic := unique("admin")
	hour := "3600000"
	if err := s.create(topic, 3, map[string]*string{"retention.ms": &hour}); err != nil {
		return err
	}
	admin, err := sarama.NewClusterAdmin(s.addrs, s.config())
	if err != nil {
		return err
	}
	defer admin.Close()
	topics, err := admin.DescribeTopics([]string{topic})
	if err != nil {
		return err
	}
	if len(topics) != 1 || len(topics[0].Partitions) != 3 {
		return fmt.Errorf("described %+v", topics)
	}
	two := "7200000"
	if err := admin.AlterConfig(sarama.TopicResource, topic, map[string]*string{"retention.ms": &two}, false); err != nil {
		return err
	}
	// ClusterAdmin.DescribeConfig of sarama 1.22 sends DescribeConfigs v0, which Kafka 4
	// removed (KIP-896) and Strata, like it, does not implement, and it cannot decode a v1
	// answer: the altered value is read back with confluent-kafka-go.
	value, err := confluentClient{bootstrap: s.addrs[0]}.describedConfig(topic, "retention.ms")
	if err != nil {
		return err
	}
	found := value == two
	entries := value
	if !found {
		return fmt.Errorf("retention.ms not altered: %+v", entries)
	}
	if err := admin.DeleteTopic(topic); err != nil {
		return err
	}
	// ClusterAdmin.ListTopics sends DescribeConfigs v0 too: the metadata says instead.
	client, err := sarama.NewClient(s.addrs, s.config())
	if err != nil {
		return err
	}
	defer client.Close()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if err := client.RefreshMetadata(); err != nil {
			return err
		}
		topics, err := client.Topics()
		if err != nil {
			return err
		}
		gone := true
		for _, t := range topics {
			gone = gone && t != topic
		}
		if gone {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the topic is still there")
}

func (s saramaClient) idempotent() error {
	topic := unique("idempotent")
	if err := s.create(topic, 2, nil); err != nil {
		return err
	}
	config := s.config()
	config.Producer.Idempotent = true
	config.Net.MaxOpenRequests = 1
	config.Producer.Retry.Max = 5
	sent := numbered(1000)
	if err := s.produce(topic, sent, config); err != nil {
		return err
	}
	got, err := s.consume(topic, 1000)
	if err != nil {
		return err
	}
	return same(got, sent)
}

func (s saramaClient) transactions() error {
	return notApplicableErr("sarama 1.22 has no transactional producer")
}

// ------------------------------------------------------------------- confluent-kafka-go

type confluentClient struct {
	bootstrap string
	// Settings every client gets (TLS and SASL).
	extra kafka.ConfigMap
}

func (c confluentClient) create(topic string, partitions int, configs map[string]string) error {
	a, err := kafka.NewAdminClient(&kafka.ConfigMap{"bootstrap.servers": c.bootstrap})
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	res, err := a.CreateTopics(ctx, []kafka.TopicSpecification{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1, Config: configs,
	}})
	if err != nil {
		return err
	}
	if res[0].Error.Code() != kafka.ErrNoError {
		return res[0].Error
	}
	return nil
}

func (c confluentClient) produce(topic string, sent []record, extra kafka.ConfigMap) error {
	config := kafka.ConfigMap{"bootstrap.servers": c.bootstrap, "acks": "all"}
	for k, v := range c.extra {
		config[k] = v
	}
	for k, v := range extra {
		config[k] = v
	}
	p, err := kafka.NewProducer(&config)
	if err != nil {
		return err
	}
	defer p.Close()
	done := make(chan kafka.Event, len(sent))
	for _, r := range sent {
		m := &kafka.Message{
			TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
			Value:          []byte(r.value),
		}
		if r.key != "" {
			m.Key = []byte(r.key)
		}
		for k, v := range r.headers {
			m.Headers = append(m.Headers, kafka.Header{Key: k, Value: []byte(v)})
		}
		if err := p.Produce(m, done); err != nil {
			return err
		}
	}
	for range sent {
		select {
		case e := <-done:
			if m, ok := e.(*kafka.Message); ok && m.TopicPartition.Error != nil {
				return m.TopicPartition.Error
			}
		case <-time.After(wait):
			return fmt.Errorf("no delivery report within %v", wait)
		}
	}
	return nil
}

func (c confluentClient) consumer(group string, extra kafka.ConfigMap) (*kafka.Consumer, error) {
	config := kafka.ConfigMap{
		"bootstrap.servers": c.bootstrap, "group.id": group,
		"auto.offset.reset": "earliest", "enable.auto.commit": false,
	}
	for k, v := range c.extra {
		config[k] = v
	}
	for k, v := range extra {
		config[k] = v
	}
	return kafka.NewConsumer(&config)
}

func (c confluentClient) consume(topic string, n int) ([]record, error) {
	cons, err := c.consumer(unique("reader"), nil)
	if err != nil {
		return nil, err
	}
	defer cons.Close()
	if err := cons.Subscribe(topic, nil); err != nil {
		return nil, err
	}
	var got []record
	deadline := time.Now().Add(wait)
	for len(got) < n && time.Now().Before(deadline) {
		m, err := cons.ReadMessage(500 * time.Millisecond)
		if err != nil {
			continue
		}
		r := record{key: string(m.Key), value: string(m.Value), headers: map[string]string{}}
		for _, h := range m.Headers {
			r.headers[h.Key] = string(h.Value)
		}
		got = append(got, r)
	}
	if len(got) < n {
		return got, fmt.Errorf("%d of %d records within %v", len(got), n, wait)
	}
	return got, nil
}

func (c confluentClient) codecs() error {
	for _, codec := range codecs {
		topic := unique("codec-" + codec)
		if err := c.create(topic, 1, nil); err != nil {
			return err
		}
		sent := records(20, codec)
		if err := c.produce(topic, sent, kafka.ConfigMap{"compression.codec": codec}); err != nil {
			return fmt.Errorf("%s: %v", codec, err)
		}
		got, err := c.consume(topic, len(sent))
		if err != nil {
			return fmt.Errorf("%s: %v", codec, err)
		}
		if err := same(got, sent); err != nil {
			return fmt.Errorf("%s: %v", codec, err)
		}
	}
	return nil
}

func (c confluentClient) group() error {
	topic, group := unique("group"), unique("g")
	if err := c.create(topic, 4, nil); err != nil {
		return err
	}
	sent := numbered(200)
	if err := c.produce(topic, sent, nil); err != nil {
		return err
	}
	var members []*kafka.Consumer
	for i := 0; i < 2; i++ {
		m, err := c.consumer(group, kafka.ConfigMap{
			"session.timeout.ms": 10000, "heartbeat.interval.ms": 500,
		})
		if err != nil {
			return err
		}
		if err := m.Subscribe(topic, nil); err != nil {
			return err
		}
		members = append(members, m)
	}
	seen := map[string]bool{}
	held := func(m *kafka.Consumer) int {
		a, err := m.Assignment()
		if err != nil {
			return 0
		}
		return len(a)
	}
	poll := func(m *kafka.Consumer) {
		if msg, err := m.ReadMessage(100 * time.Millisecond); err == nil {
			seen[string(msg.Value)] = true
		}
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) && !(held(members[0]) > 0 && held(members[1]) > 0) {
		poll(members[0])
		poll(members[1])
	}
	if held(members[0]) == 0 || held(members[1]) == 0 {
		return fmt.Errorf("both members should hold partitions")
	}
	poll(members[0])
	if _, err := members[0].Commit(); err != nil && err.(kafka.Error).Code() != kafka.ErrNoOffset {
		return fmt.Errorf("committing: %v", err)
	}
	members[0].Close()
	stay := members[1]
	for time.Now().Before(deadline) && (held(stay) != 4 || len(seen) < 200) {
		poll(stay)
	}
	for time.Now().Before(deadline) {
		if _, err := stay.Commit(); err == nil {
			break
		}
		poll(stay)
	}
	n := held(stay)
	stay.Close()
	if n != 4 {
		return fmt.Errorf("the member left holds %d partitions", n)
	}
	if len(seen) != 200 {
		return fmt.Errorf("%d of 200 records consumed", len(seen))
	}
	return nil
}

func (c confluentClient) commits() error {
	topic, group := unique("commits"), unique("g")
	if err := c.create(topic, 1, nil); err != nil {
		return err
	}
	sent := numbered(10)
	if err := c.produce(topic, sent, nil); err != nil {
		return err
	}
	first, err := c.consumer(group, nil)
	if err != nil {
		return err
	}
	tp := kafka.TopicPartition{Topic: &topic, Partition: 0, Offset: 6}
	if err := first.Assign([]kafka.TopicPartition{tp}); err != nil {
		return err
	}
	if _, err := first.CommitOffsets([]kafka.TopicPartition{tp}); err != nil {
		return err
	}
	committed, err := first.Committed([]kafka.TopicPartition{{Topic: &topic, Partition: 0}}, 10000)
	first.Close()
	if err != nil {
		return err
	}
	if committed[0].Offset != 6 {
		return fmt.Errorf("committed %v, want 6", committed[0].Offset)
	}
	again, err := c.consumer(group, nil)
	if err != nil {
		return err
	}
	defer again.Close()
	if err := again.Subscribe(topic, nil); err != nil {
		return err
	}
	m, err := again.ReadMessage(wait)
	if err != nil {
		return err
	}
	if m.TopicPartition.Offset != 6 {
		return fmt.Errorf("a new member starts at %v, want 6", m.TopicPartition.Offset)
	}
	return nil
}

func (c confluentClient) admin() error {
	topic := unique("admin")
	if err := c.create(topic, 3, map[string]string{"retention.ms": "3600000"}); err != nil {
		return err
	}
	a, err := kafka.NewAdminClient(&kafka.ConfigMap{"bootstrap.servers": c.bootstrap})
	if err != nil {
		return err
	}
	defer a.Close()
	md, err := a.GetMetadata(&topic, false, 10000)
	if err != nil {
		return err
	}
	if len(md.Topics[topic].Partitions) != 3 {
		return fmt.Errorf("described %+v", md.Topics[topic])
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resource := kafka.ConfigResource{Type: kafka.ResourceTopic, Name: topic}
	set := resource
	set.Config = []kafka.ConfigEntry{{Name: "retention.ms", Value: "7200000", Operation: kafka.AlterOperationSet}}
	if _, err := a.AlterConfigs(ctx, []kafka.ConfigResource{set}); err != nil {
		return err
	}
	if v, err := c.describedConfig(topic, "retention.ms"); err != nil || v != "7200000" {
		return fmt.Errorf("retention.ms is %q (%v)", v, err)
	}
	if _, err := a.DeleteTopics(ctx, []string{topic}); err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		md, err := a.GetMetadata(nil, true, 10000)
		if err != nil {
			return err
		}
		if _, ok := md.Topics[topic]; !ok {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the topic is still there")
}

// describedConfig is the value of topic config `name` as DescribeConfigs answers it.
func (c confluentClient) describedConfig(topic, name string) (string, error) {
	a, err := kafka.NewAdminClient(&kafka.ConfigMap{"bootstrap.servers": c.bootstrap})
	if err != nil {
		return "", err
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	described, err := a.DescribeConfigs(ctx, []kafka.ConfigResource{{Type: kafka.ResourceTopic, Name: topic}})
	if err != nil {
		return "", err
	}
	return described[0].Config[name].Value, nil
}

func (c confluentClient) idempotent() error {
	topic := unique("idempotent")
	if err := c.create(topic, 2, nil); err != nil {
		return err
	}
	sent := numbered(1000)
	if err := c.produce(topic, sent, kafka.ConfigMap{"enable.idempotence": true}); err != nil {
		return err
	}
	got, err := c.consume(topic, 1000)
	if err != nil {
		return err
	}
	return same(got, sent)
}

func (c confluentClient) transactions() error {
	return notApplicableErr("confluent-kafka-go 0.11 has no transactional API")
}

// ------------------------------------------------------------------------------ main

// numbered is n keyless records valued v0, v1, ….
func numbered(n int) []record {
	var out []record
	for i := 0; i < n; i++ {
		out = append(out, record{value: fmt.Sprintf("v%d", i)})
	}
	return out
}

type naError struct{ why string }

func (e naError) Error() string { return e.why }

func notApplicableErr(why string) error { return naError{why} }

func main() {
	bootstrap := flag.String("bootstrap", "127.0.0.1:9092", "")
	client := flag.String("client", "sarama", "sarama or confluent-kafka-go")
	secured := flag.String("security", "", "the secured listeners and credentials (JSON)")
	flag.Parse()
	if *secured != "" {
		text, err := os.ReadFile(*secured)
		if err == nil {
			sec = &security{}
			err = json.Unmarshal(text, sec)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "reading", *secured, err)
			os.Exit(2)
		}
	}
	var version string
	var scenarios map[string]func() error
	switch *client {
	case "sarama":
		s := saramaClient{addrs: []string{*bootstrap}}
		version = "1.22.1"
		scenarios = map[string]func() error{
			"codecs": s.codecs, "group": s.group, "commits": s.commits, "admin": s.admin,
			"idempotent": s.idempotent, "transactions": s.transactions, "security": s.security,
		}
	case "confluent-kafka-go":
		c := confluentClient{bootstrap: *bootstrap}
		_, lib := kafka.LibraryVersion()
		version = "0.11.6 (librdkafka " + lib + ")"
		scenarios = map[string]func() error{
			"codecs": c.codecs, "group": c.group, "commits": c.commits, "admin": c.admin,
			"idempotent": c.idempotent, "transactions": c.transactions, "security": c.security,
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown client", *client)
		os.Exit(2)
	}
	for _, name := range []string{"codecs", "group", "commits", "admin", "idempotent", "transactions", "security"} {
		started := time.Now()
		result := "pass"
		if err := scenarios[name](); err != nil {
			if na, ok := err.(naError); ok {
				result = "n/a: " + na.why
			} else {
				result = "FAIL: " + err.Error()
			}
		}
		line, _ := json.Marshal(map[string]interface{}{
			"client": *client, "version": version, "scenario": name, "result": result,
			"seconds": time.Since(started).Seconds(),
		})
		fmt.Println(string(line))
	}
}

// ------------------------------------------------------------------------------ security

// The broker's secured listeners and a SCRAM user (written by tests/compat/run.sh).
type security struct {
	SaslSsl      string `json:"sasl_ssl"`
	Mtls         string `json:"mtls"`
	Ca           string `json:"ca"`
	ClientCert   string `json:"client_cert"`
	ClientKey    string `json:"client_key"`
	StrangerCert string `json:"stranger_cert"`
	StrangerKey  string `json:"stranger_key"`
	User         string `json:"user"`
	Password     string `json:"password"`
}

var sec *security

func roots() (*x509.CertPool, error) {
	pem, err := os.ReadFile(sec.Ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", sec.Ca)
	}
	return pool, nil
}

// security: produce over SASL_SSL with SCRAM-SHA-512 and with PLAIN (sarama's PLAIN is the
// v0 handshake with bare tokens), and over mutual TLS; consume it all over mutual TLS; a
// wrong password and a stranger's certificate are refused.
func (s saramaClient) security() error {
	if sec == nil {
		return notApplicableErr("no secured listeners given (-security)")
	}
	topic := unique("secure")
	if err := s.create(topic, 1, nil); err != nil {
		return err
	}
	pool, err := roots()
	if err != nil {
		return err
	}
	scram := saramaClient{addrs: []string{sec.SaslSsl}, tls: &tls.Config{RootCAs: pool},
		mechanism: "SCRAM-SHA-512", user: sec.User, password: sec.Password}
	plain := scram
	plain.mechanism = "PLAIN"
	cert, err := tls.LoadX509KeyPair(sec.ClientCert, sec.ClientKey)
	if err != nil {
		return err
	}
	mtls := saramaClient{addrs: []string{sec.Mtls},
		tls: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}
	var sent []record
	for name, client := range map[string]saramaClient{"scram": scram, "plain": plain, "mtls": mtls} {
		batch := records(5, name)
		if err := client.produce(topic, batch, client.config()); err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		sent = append(sent, batch...)
	}
	got, err := mtls.consume(topic, len(sent))
	if err != nil {
		return err
	}
	if err := same(got, sent); err != nil {
		return err
	}
	wrong := scram
	wrong.password = "wrong"
	if err := wrong.produce(topic, sent[:1], wrong.config()); err == nil {
		return fmt.Errorf("a wrong password was accepted")
	}
	stranger, err := tls.LoadX509KeyPair(sec.StrangerCert, sec.StrangerKey)
	if err != nil {
		return err
	}
	other := saramaClient{addrs: []string{sec.Mtls},
		tls: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{stranger}}}
	if err := other.produce(topic, sent[:1], other.config()); err == nil {
		return fmt.Errorf("a certificate of another CA was accepted")
	}
	return nil
}

// security: as sarama's, through librdkafka.
func (c confluentClient) security() error {
	if sec == nil {
		return notApplicableErr("no secured listeners given (-security)")
	}
	topic := unique("secure")
	if err := c.create(topic, 1, nil); err != nil {
		return err
	}
	scram := confluentClient{bootstrap: sec.SaslSsl, extra: kafka.ConfigMap{
		"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
		"sasl.username": sec.User, "sasl.password": sec.Password, "ssl.ca.location": sec.Ca,
	}}
	mtls := confluentClient{bootstrap: sec.Mtls, extra: kafka.ConfigMap{
		"security.protocol": "SSL", "ssl.ca.location": sec.Ca,
		"ssl.certificate.location": sec.ClientCert, "ssl.key.location": sec.ClientKey,
	}}
	var sent []record
	for name, client := range map[string]confluentClient{"scram": scram, "mtls": mtls} {
		batch := records(5, name)
		if err := client.produce(topic, batch, nil); err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		sent = append(sent, batch...)
	}
	got, err := scram.consume(topic, len(sent))
	if err != nil {
		return err
	}
	if err := same(got, sent); err != nil {
		return err
	}
	wrong := confluentClient{bootstrap: sec.SaslSsl, extra: kafka.ConfigMap{}}
	for k, v := range scram.extra {
		wrong.extra[k] = v
	}
	wrong.extra["sasl.password"] = "wrong"
	wrong.extra["message.timeout.ms"] = 5000
	if err := wrong.produce(topic, sent[:1], nil); err == nil {
		return fmt.Errorf("a wrong password was accepted")
	}
	return nil
}

// scramClient is SCRAM-SHA-512 (RFC 5802) for sarama, which leaves the mechanism to the
// application.
type scramClient struct {
	user, password, nonce, firstBare string
	expected                         []byte
	step                             int
}

func (c *scramClient) Begin(user, password, authzID string) error {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	c.user, c.password, c.nonce = user, password, base64.StdEncoding.EncodeToString(raw)
	name := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(user)
	c.firstBare = "n=" + name + ",r=" + c.nonce
	return nil
}

func mac(key, data []byte) []byte {
	h := hmac.New(sha512.New, key)
	h.Write(data)
	return h.Sum(nil)
}

// hi is PBKDF2-HMAC-SHA-512 with one block, as SCRAM uses it.
func hi(password, salt []byte, iterations int) []byte {
	u := mac(password, append(append([]byte{}, salt...), 0, 0, 0, 1))
	out := append([]byte{}, u...)
	for i := 1; i < iterations; i++ {
		u = mac(password, u)
		for j := range out {
			out[j] ^= u[j]
		}
	}
	return out
}

func (c *scramClient) Step(challenge string) (string, error) {
	c.step++
	switch c.step {
	case 1:
		return "n,," + c.firstBare, nil
	case 2:
		attrs := map[string]string{}
		for _, kv := range strings.Split(challenge, ",") {
			if len(kv) > 2 {
				attrs[kv[:1]] = kv[2:]
			}
		}
		if !strings.HasPrefix(attrs["r"], c.nonce) {
			return "", fmt.Errorf("the server's nonce does not extend ours")
		}
		salt, err := base64.StdEncoding.DecodeString(attrs["s"])
		if err != nil {
			return "", err
		}
		var iterations int
		fmt.Sscan(attrs["i"], &iterations)
		salted := hi([]byte(c.password), salt, iterations)
		clientKey := mac(salted, []byte("Client Key"))
		stored := sha512.Sum512(clientKey)
		withoutProof := "c=biws,r=" + attrs["r"]
		auth := []byte(c.firstBare + "," + challenge + "," + withoutProof)
		signature := mac(stored[:], auth)
		proof := make([]byte, len(clientKey))
		for i := range proof {
			proof[i] = clientKey[i] ^ signature[i]
		}
		c.expected = mac(mac(salted, []byte("Server Key")), auth)
		return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
	default:
		got, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(challenge, "v="))
		if err != nil || !hmac.Equal(got, c.expected) {
			return "", fmt.Errorf("the broker's signature is wrong")
		}
		return "", nil
	}
}

func (c *scramClient) Done() bool { return c.step >= 3 }
